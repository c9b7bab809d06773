#!/usr/bin/env bash
# cnnkit with its CUDA kernels, built and linked against a CUDA build of torch, on a machine
# without a GPU (CI runs this): a venv with torch $CNNKIT_CUDA_TORCH (default 2.14.1, a
# CUDA 13.0 build), a copy of the source tree built there with CNNKIT_FORCE_CUDA=1, a check that
# every op with a kernel in csrc/cuda has its CUDA kernel registered, and the op, module and
# model tests run against that build (its CUDA tests skip without a GPU).
#
# The copy keeps the main build (the torch 2.13 CPU build in the source tree) untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=${CNNKIT_CUDA_TORCH:-2.14.1}
venv=build/venv-cuda
copy=build/cuda-source
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} CNNKIT_FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} MAX_JOBS=${MAX_JOBS:-$(nproc)}
# torch's cpp_extension would take nvcc's directory from PATH, where nvcc may be a wrapper.
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc under CUDA_HOME=$CUDA_HOME"; exit 1; }

step() { echo "-- $1 ($SECONDS s)"; }
step "torch $torch_version in $venv"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
"$venv/bin/pip" install -q "torch==$torch_version" setuptools wheel ninja

step "copying the source tree to $copy"
rm -rf "$copy/cnnkit" "$copy/csrc" "$copy/tests"
mkdir -p "$copy"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy"

step "building cnnkit with CUDA for $TORCH_CUDA_ARCH_LIST"
venv_python=$PWD/$venv/bin/python
cd "$copy"
"$venv_python" -m pip install -q --no-build-isolation -e ".[test]" >../cuda-build.log 2>&1 \
  || { tail -40 ../cuda-build.log; exit 1; }

step "CUDA kernels registered"
"$venv_python" scripts/check_cuda_kernels.py
"$(dirname "$venv_python")/cnnkit" info

# The tests that touch the build or torch's APIs: ops, modules, models, compile/export/ONNX,
# distributed. Data loading, the CLI and checkpoints do not depend on either, and the kernel
# parity at lower SIMD levels ran in the main build.
step "the op, module and model tests on torch $torch_version"
ignored=()
for name in cli_train checkpoint imagefolder degradation data_idx data_cifar data_dataset \
    schedules summary small_fixes train_pipeline emulated_cuda; do
  ignored+=(--ignore "tests/test_$name.py")
done
"$venv_python" -m pytest -q -p no:cacheprovider "${ignored[@]}" \
  --deselect tests/test_cpu_capability.py::test_kernel_parity_tests_pass_at tests
step "done"
