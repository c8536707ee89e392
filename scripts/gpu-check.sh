#!/usr/bin/env bash
# The device check: build the C++ core against a CUDA torch (python3's, or $PYTHON's) and run its ctest suite, CPU and
# CUDA. No Node needed, so it runs on a GPU machine as it is. On a machine without a GPU it still compiles and links
# the CUDA build and runs the CPU tests against that libtorch, for the architectures in TORCH_CUDA_ARCH_LIST (9.0 by
# default), and says that the CUDA tests did not run.
#   bash scripts/gpu-check.sh                      # python3's torch
#   PYTHON=/path/to/venv/bin/python bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
read -r torch_dir cuda available < <("$py" -c "import os, torch; print(os.path.dirname(torch.__file__), torch.version.cuda, torch.cuda.is_available())")
echo "torch at $torch_dir, CUDA $cuda, device available: $available"
if [ "$cuda" = "None" ]; then
  echo "this torch has no CUDA: install a CUDA build of torch for $py" >&2
  exit 1
fi
args=(-DTUNEKIT_ADDON=OFF -DCMAKE_BUILD_TYPE=Release)
# torch's CMake finds the CUDA toolkit through the nvcc first on PATH; prefer the toolkit's own over a lone link.
cuda_home=${CUDA_HOME:-/usr/local/cuda}
[ -x "$cuda_home/bin/nvcc" ] && export PATH="$cuda_home/bin:$PATH"
# A pip-installed CUDA torch keeps its CUDA libraries in nvidia/*/lib without the unversioned names CMake looks for.
nvrtc=$(ls "$torch_dir"/../nvidia/*/lib/libnvrtc.so.[0-9]* "$torch_dir"/../nvidia/cuda_nvrtc/lib/libnvrtc.so.[0-9]* 2>/dev/null | head -1 || true)
[ -n "$nvrtc" ] && args+=("-DCUDA_nvrtc_LIBRARY=$nvrtc")
# Without a GPU, torch's CMake cannot detect the architecture to build for.
[ "$available" = "True" ] || args+=("-DTORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}")
LIBTORCH="$torch_dir" cmake -S . -B build-gpu "${args[@]}"
cmake --build build-gpu -j"$(nproc)"
if [ "$available" = "True" ]; then
  ctest --test-dir build-gpu --output-on-failure
else
  ctest --test-dir build-gpu --output-on-failure -E core_cuda
  echo "no CUDA device here: the CUDA build compiled and linked, its CPU tests ran, the CUDA tests did not"
fi
