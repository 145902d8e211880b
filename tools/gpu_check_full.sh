#!/usr/bin/env bash
# The second GPU run, for when time is left after tools/gpu_check.sh: the whole CUDA test file,
# compute-sanitizer on both kernel versions, the operator benchmark with its peers on every CUDA
# case, Table III and DDet's breakdown on CUDA. At most 9.5 minutes; builds only if the short
# check has not (same machine). Results under $OUT (default ./gpu-check-out), a summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-570}
mkdir -p "$OUT"
# The in-place build of this tree, for the scripts that do not add the repository to sys.path.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
LOG="$OUT/gpu_check_full.log"
: > "$LOG"
status=0
SUMMARY=()
START=$SECONDS

step() {  # step NAME LIMIT COMMAND...: as in tools/gpu_check.sh
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 5 ]; then SUMMARY+=("| $name | skipped: out of budget | - |"); status=1; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local begin=$SECONDS
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("| $name | $([ "$rc" -eq 0 ] && echo ok || echo "FAILED ($rc)") | $((SECONDS - begin)) s |")
  [ "$rc" -eq 0 ] || status=1
}

if ! "$PY" -c "import ddet_ops, sys; sys.exit(0 if ddet_ops.cuda_compiled() else 1)" 2>/dev/null; then
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  step build 150 env TORCH_CUDA_ARCH_LIST="$ARCH" FORCE_CUDA=1 MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --inplace
fi
step cuda-tests 150 "$PY" -m pytest tests/test_ops_cuda.py -m cuda -q -p no:cacheprovider
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
for version in v1 v2; do
  if [ -n "$SANITIZER" ]; then
    step "sanitizer-$version" 45 env DDET_OPS_CUDA_KERNELS=$version "$SANITIZER" --tool memcheck --error-exitcode 1 \
      "$PY" tools/sanitizer_case.py
  else
    SUMMARY+=("| sanitizer-$version | not found | - |"); status=1
  fi
done
GPU=$("$PY" -c "import torch; print(''.join(c if c.isalnum() else '-' for c in torch.cuda.get_device_name().lower()).strip('-'))")
DAY=$(date -u +%Y-%m-%d)
step ops-benchmark 150 "$PY" benchmarks/bench_dynconv.py --ops --device cuda \
  --json "$OUT/ops-$GPU-$DAY.json" --markdown "$OUT/ops-$GPU-$DAY.md"
step table3 45 "$PY" benchmarks/bench_dynconv.py --device cuda \
  --json "$OUT/table3-$GPU-$DAY.json" --markdown "$OUT/table3-$GPU-$DAY.md"
step breakdown 40 "$PY" benchmarks/bench_dynconv.py --breakdown --device cuda \
  --json "$OUT/breakdown-$GPU-$DAY.json" --markdown "$OUT/breakdown-$GPU-$DAY.md"

echo
[ -f "$OUT/ops-$GPU-$DAY.md" ] && cat "$OUT/ops-$GPU-$DAY.md"
echo
echo "| step | result | time |"
echo "|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
echo "total $((SECONDS - START)) s of the ${BUDGET_S} s budget; files in $OUT"
exit $status
