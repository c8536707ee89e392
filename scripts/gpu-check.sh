#!/usr/bin/env bash
# The device check for a GPU machine (no Node there): build the C++ core against that machine's CUDA torch
# (python3's) and run its ctest suite, CPU and CUDA. Usage: bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
cmake -S . -B build-gpu -DTUNEKIT_ADDON=OFF -DCMAKE_BUILD_TYPE=Release
cmake --build build-gpu -j"$(nproc)"
ctest --test-dir build-gpu --output-on-failure
