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
      "-ltorch", "-ltorch_cpu", "-lc10",
      "-Wl,-rpath,'$$ORIGIN/../../libtorch/lib'"
    ],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GLIBCXX_USE_CXX11_ABI=1", "USE_C10D_GLOO"],
    "cflags!": ["-fno-exceptions", "-fno-rtti"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
    "cflags_cc": ["-std=c++20", "-fexceptions", "-frtti", "-O2", "-Wno-unused-parameter", "-Wno-deprecated-declarations"]
  }]
}
