{
  "targets": [{
    "target_name": "tunekit",
    "sources": [
      "<!@(node -p \"require('./native/sources.json').addon.concat(require('./native/sources.json').core).join(' ')\")"
    ],
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "<!@(node scripts/torch-paths.js include)",
      "native/third_party/gloo/include"
    ],
    "libraries": [
      "-L<!(node scripts/torch-paths.js lib)",
      "-ltorch", "-ltorch_cpu", "-lc10", "-fopenmp",
      "-Wl,-rpath,'$$ORIGIN/../../libtorch/lib'"
    ],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GLIBCXX_USE_CXX11_ABI=1", "USE_C10D_GLOO"],
    "cflags!": ["-fno-exceptions", "-fno-rtti"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
    "cflags_cc": [
      "-std=c++20", "-fexceptions", "-frtti", "-fopenmp", "-O2", "-Wno-unused-parameter", "-Wno-deprecated-declarations",
      "-Winvalid-pch", "-include", "<(INTERMEDIATE_DIR)/pch/torch_headers.h"
    ],
    # -fopenmp: at::parallel_for is a header template that splits work over libtorch's threads only where it is compiled
    # with OpenMP (libtorch's own backend; the addon then shares libtorch's libgomp). Without it every kernel in
    # native/core/ops/ ran on one thread. runtimeInfo().kernelThreads reports what the kernels get.
    # Every core file starts by parsing libtorch's headers (native/core/torch_headers.h), which was most of the
    # compile: they are precompiled once, with the very flags the sources get (gcc ignores a header precompiled with
    # others, and -Winvalid-pch says so), and -include'd ahead of each file. The glue files get it too; they stay free
    # of torch code all the same.
    "actions": [{
      "action_name": "torch_pch",
      "inputs": ["native/core/torch_headers.h", "<!(node scripts/torch-paths.js root)/include/torch/csrc/api/include/torch/version.h"],
      "outputs": ["<(INTERMEDIATE_DIR)/pch/torch_headers.h.gch"],
      "action": ["sh", "-c", "rm -f <(INTERMEDIATE_DIR)/pch/torch_headers.h.gch && cp native/core/torch_headers.h <(INTERMEDIATE_DIR)/pch/ && $(CXX.target) $(DEFS_$(BUILDTYPE)) $(INCS_$(BUILDTYPE)) $(CFLAGS_$(BUILDTYPE)) $(filter-out -include %/pch/torch_headers.h,$(CFLAGS_CC_$(BUILDTYPE))) -x c++-header <(INTERMEDIATE_DIR)/pch/torch_headers.h -o <(INTERMEDIATE_DIR)/pch/torch_headers.h.gch"]
    }]
  }]
}
