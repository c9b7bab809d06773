#!/usr/bin/env bash
# The op tests on CPU kernels built with AddressSanitizer and UBSan, and the CUDA kernels
# run on the CPU through the test-only emulation, also so built (CI runs this).
#
# Builds cnnkit._C with CNNKIT_SANITIZE=1 into build/sanitize (the installed build is left
# alone), puts it beside a copy of the Python package, and runs the op tests and the
# bad-input cases against it, with the sanitizer runtimes preloaded into Python. Any report
# aborts the run. Small shapes, so it is cheap; DEFAULT and AVX2 kernels are compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/sanitize
mkdir -p "$out"
echo "building cnnkit._C with -fsanitize=address,undefined into $out"
CNNKIT_SANITIZE=1 CNNKIT_FORCE_CUDA=0 CNNKIT_CPU_CAPABILITY=AVX2 \
  python setup.py -q build_ext --build-lib "$out/lib" >"$out.log" 2>&1 || { tail -40 "$out.log"; exit 1; }
rm -rf "$out/package"
mkdir -p "$out/package"
cp -r cnnkit "$out/package/"
rm -f "$out"/package/cnnkit/_C*.so
cp "$out"/lib/cnnkit/_C*.so "$out/package/cnnkit/"

runtimes="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$runtimes" PYTHONPATH="$PWD/$out/package"
# Python and torch are not instrumented: no leak checking, and their own allocations are
# not ASan's business; any error in cnnkit's code aborts.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:verify_asan_link_order=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# From the copy's directory: Python puts the working directory first on its path, and the
# repository root holds the installed build.
tests=$PWD/tests
cd "$out/package"
python -c 'import cnnkit, sys; path = cnnkit._ops._C.__file__; print("testing", path);
sys.exit(0 if "/build/sanitize/" in path else "not the sanitized build: " + path)'
# CNNKIT_SANITIZE=1 builds the emulated CUDA kernels (tests/emulated_cuda.py) with the sanitizers.
CNNKIT_SANITIZE=1 python -m pytest -q -p no:cacheprovider "$tests/test_lrn.py" "$tests/test_batch_norm.py" \
  "$tests/test_max_pool.py" "$tests/test_bad_input.py" "$tests/test_properties.py" "$tests/test_emulated_cuda.py"
