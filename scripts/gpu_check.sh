#!/usr/bin/env bash
# Everything cnnkit checks on a GPU, in one command that fits a short lease (each step has a
# time limit; together at most 630 s, typically under 9 minutes on one H100/H200): build with CUDA for the local GPU only, the CUDA tests, compute-sanitizer
# (memcheck and racecheck) on scripts/cuda_smoke.py, and the CUDA benchmarks. Results, each
# naming the GPU, go to $OUT (else benchmarks/results/gpu), with summary.md listing every
# step, its status and its time. Every step runs even if an earlier one failed; the exit
# status says whether all passed.
#
#   scripts/gpu_check.sh             # on the GPU machine
#   scripts/gpu_check.sh --dry-run   # on a CPU-only machine: the same steps, the CUDA ones
#                                    # replaced by their CPU counterparts or skipped (CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]"; exit 2 ;;
esac
python=${PYTHON:-python3}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary=$out/summary.md
failed=0
start=$SECONDS

# step NAME LIMIT_SECONDS COMMAND...: runs it with its output in $out/NAME.log and tee'd.
step() {
  local name=$1 limit=$2
  shift 2
  local begin=$SECONDS
  echo "== [$((SECONDS - start)) s] $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local status=${PIPESTATUS[0]}
  local verdict=passed
  if [ "$status" -eq 124 ]; then verdict="timed out after $limit s"; elif [ "$status" -ne 0 ]; then verdict="failed ($status)"; fi
  [ "$verdict" = passed ] || failed=1
  echo "| $name | $verdict | $((SECONDS - begin)) s |" >>"$summary"
}

skip() {
  echo "== $1: skipped, $2"
  echo "| $1 | skipped: $2 | 0 s |" >>"$summary"
}

if [ "$dry_run" = 1 ]; then
  device=cpu
  gpu="none (dry run on $(uname -m); CUDA steps replaced by CPU runs or skipped)"
else
  device=cuda
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  [ -n "$gpu" ] || { echo "nvidia-smi found no GPU; use --dry-run on a CPU-only machine"; exit 1; }
fi
{
  echo "# gpu_check"
  echo
  echo "GPU: $gpu; revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
} >"$summary"

if [ "$dry_run" = 1 ]; then
  skip build "the CUDA build needs a GPU's architecture (CI builds for sm_80/sm_90 in scripts/cuda_build.sh)"
  step cuda-tests 120 "$python" -m pytest -q -p no:cacheprovider -m cuda --collect-only tests
  step smoke 120 "$python" scripts/cuda_smoke.py --device cpu
  skip memcheck "compute-sanitizer needs a GPU"
  skip racecheck "compute-sanitizer needs a GPU"
  step bench-passes 120 "$python" benchmarks/bench_batchnorm_passes.py --device cpu --quick --rounds 1 \
    --min-run-time 0.01
  step bench-batchnorm 120 "$python" benchmarks/bench_batchnorm.py --device cpu --quick --no-compile --rounds 1 \
    --min-run-time 0.01
  step bench-lrn 120 "$python" benchmarks/bench_lrn.py --device cpu --quick --no-compile --output "$out"
  step bench-models 300 "$python" benchmarks/bench_models.py --device cpu --models --train-models resnet18 \
    --train-batch 2 --rounds 1 --no-write
else
  arch=$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  nvcc_path=$(command -v nvcc || true)
  export CUDA_HOME=${CUDA_HOME:-$([ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda || dirname "$(dirname "$nvcc_path")")}
  export CNNKIT_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc)
  step build 150 "$python" setup.py -q build_ext --inplace
  step cuda-tests 90 "$python" -m pytest -q -p no:cacheprovider -m "cuda or emulated_cuda" \
    --junitxml="$out/cuda-tests.xml" tests
  sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
  step memcheck 75 "$sanitizer" --tool memcheck --error-exitcode 1 "$python" scripts/cuda_smoke.py
  step racecheck 75 "$sanitizer" --tool racecheck --error-exitcode 1 "$python" scripts/cuda_smoke.py --quick
  step bench-passes 45 "$python" benchmarks/bench_batchnorm_passes.py --device cuda --rounds 3 \
    --min-run-time 0.02 --output "$out"
  step bench-batchnorm 45 "$python" benchmarks/bench_batchnorm.py --device cuda --no-compile --rounds 2 \
    --min-run-time 0.02 --output "$out"
  step bench-lrn 30 "$python" benchmarks/bench_lrn.py --device cuda --dtype bfloat16 --no-compile --output "$out"
  step bench-models 120 "$python" benchmarks/bench_models.py --device cuda --models --train-models resnet50 \
    --rounds 2 --output "$out"
fi

echo >>"$summary"
echo "Total: $((SECONDS - start)) s" >>"$summary"
echo
cat "$summary"
exit "$failed"
