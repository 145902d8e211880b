#!/usr/bin/env bash
# The one-shot GPU check: build, CUDA tests, compute-sanitizer, operator benchmark, Table III and
# DDet's breakdown on CUDA. Run from the repository root on a machine with an NVIDIA GPU, torch
# and nvcc (no network needed). Results go to $OUT (default: ./gpu-check-out); a summary table is printed last.
# Each step has its own time limit; a normal run ends within 7 minutes.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}  # the interpreter that holds torch (python3 on the lent GPU machines)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
status=0
step() {  # step NAME SECONDS COMMAND...: run, log, remember failure
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
  SUMMARY+=("| $name | $rc | $((SECONDS - start)) s |")
  [ "$rc" -eq 0 ] || status=1
}
SUMMARY=()

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv | tee -a "$LOG"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$LOG"

# Builds for the GPU in this machine (torch reads its compute capability when the list is unset).
step build 120 "$PY" -m pip install --no-build-isolation --no-deps -v .
cd /tmp  # import the installed package, not the source folder
REPO=$OLDPWD
step cuda-tests 100 "$PY" -m pytest "$REPO/tests/test_ops_cuda.py" -m cuda -q -p no:cacheprovider \
  --junitxml="$OUT/cuda-tests.xml"
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$SANITIZER" ]; then
  step sanitizer 45 "$SANITIZER" --tool memcheck --error-exitcode 1 --log-file "$OUT/sanitizer.log" \
    "$PY" "$REPO/tools/sanitizer_case.py"
else
  echo "compute-sanitizer not found" | tee -a "$LOG"; SUMMARY+=("| sanitizer | not found | - |"); status=1
fi
GPU=$("$PY" -c "import torch; print(''.join(c if c.isalnum() else '-' for c in torch.cuda.get_device_name().lower()).strip('-'))")
DAY=$(date -u +%Y-%m-%d)
step ops-benchmark 150 "$PY" "$REPO/benchmarks/bench_dynconv.py" --ops --device cuda \
  --json "$OUT/ops-$GPU-$DAY.json" --markdown "$OUT/ops-$GPU-$DAY.md"
step table3 45 "$PY" "$REPO/benchmarks/bench_dynconv.py" --device cuda \
  --json "$OUT/table3-$GPU-$DAY.json" --markdown "$OUT/table3-$GPU-$DAY.md"
step breakdown 40 "$PY" "$REPO/benchmarks/bench_dynconv.py" --breakdown --device cuda \
  --json "$OUT/breakdown-$GPU-$DAY.json" --markdown "$OUT/breakdown-$GPU-$DAY.md"

echo
[ -f "$OUT/ops-$GPU-$DAY.md" ] && cat "$OUT/ops-$GPU-$DAY.md"
echo
echo "| step | exit | time |"
echo "|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
exit $status
