#!/usr/bin/env bash
# Compiles (syntax only) every csrc/cuda/*_cuda.cpp against the installed torch's headers and
# the CUDA toolkit's, so the CUDA glue is checked on machines whose torch has no CUDA.
# A CPU build of torch ships the c10/cuda headers but not the generated cuda_cmake_macros.h,
# which only defines build options: an empty stand-in is enough for a syntax check.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_include=$(python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
mkdir -p "$stub/c10/cuda/impl" && touch "$stub/c10/cuda/impl/cuda_cmake_macros.h"
for source in csrc/cuda/*_cuda.cpp; do
  echo "checking $source"
  g++ -std=c++20 -fsyntax-only -w -DCNNKIT_WITH_CUDA -I "$stub" -I "$torch_include" \
    -I "$torch_include/torch/csrc/api/include" -I "$cuda_home/include" -I /usr/local/cuda/include \
    -I csrc -I csrc/include "$source"
done
