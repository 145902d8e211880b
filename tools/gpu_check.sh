#!/usr/bin/env bash
# The short GPU check, at most 6 minutes on a fresh machine with an NVIDIA GPU, torch and nvcc (no
# network): build for this GPU only -> a correctness subset of the CUDA tests -> raw-op timings of
# the v1 and v2 CUDA kernels with CUDA events -> the unfold and torch.compile peers on the headline
# case -> ncu on the v2 kernels where its counters can be read. Each step has a time limit (cut to
# what is left of the whole budget), writes under $OUT (default ./gpu-check-out) as it goes, and
# a summary comes last. tools/gpu_check_full.sh is the longer second run (Table III, full suite).
#   tools/gpu_check.sh              on the GPU machine, from the repository root
#   tools/gpu_check.sh --wheel FILE on the GPU machine, with a ddet_ops wheel built elsewhere instead
#                                   of the build step (FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 pip wheel
#                                   --no-deps . with any CUDA torch >= 2.11 of the same CUDA major)
#   tools/gpu_check.sh --dry-run    anywhere: runs the steps that need no GPU on the CPU, skips the rest
set -uo pipefail
USAGE="usage: tools/gpu_check.sh [--dry-run | --wheel FILE]"
DRY=0
WHEEL=
case "${1:-}" in
  --dry-run) DRY=1 ;;
  --wheel) [ -f "${2:-}" ] || { echo "$USAGE: no wheel file '${2:-}'" >&2; exit 2; }; WHEEL=$(realpath "$2") ;;
  "") ;;
  *) echo "$USAGE" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-check-out}
PY=${PYTHON:-python3}  # the interpreter that holds torch
# The dry run checks the code, not the time: on a CPU it gets three times the limits.
SLOWER=$((DRY ? 3 : 1))
BUDGET_S=$((${GPU_CHECK_BUDGET_S:-360} * SLOWER))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
: > "$LOG"
status=0
SUMMARY=()
START=$SECONDS

# step NAME LIMIT COMMAND...: runs it under min(LIMIT, budget left), logs it, remembers failure.
# The last 20 s of the budget are kept for the summary.
step() {
  local name=$1 limit=$(($2 * SLOWER)); shift 2
  local left=$((BUDGET_S - 20 - (SECONDS - START)))
  [ "$name" != summary ] || left=$((left + 20))
  if [ "$left" -lt 5 ]; then skip "$name" "out of the ${BUDGET_S}s budget"; status=1; return; fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local begin=$SECONDS
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - begin))s" | tee -a "$LOG"
  SUMMARY+=("| $name | $([ "$rc" -eq 0 ] && echo ok || echo "FAILED ($rc)") | $((SECONDS - begin)) s |")
  [ "$rc" -eq 0 ] || status=1
}
skip() { echo "=== $1: skipped ($2)" | tee -a "$LOG"; SUMMARY+=("| $1 | skipped: $2 | - |"); }
gpu_step() { if [ "$DRY" -eq 1 ]; then skip "$1" "dry run, needs a GPU"; else step "$@"; fi; }

"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
  2>&1 | tee -a "$LOG"
if [ "$DRY" -eq 0 ]; then
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$LOG"
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || ARCH=unknown
  echo "GPU architecture: $ARCH" | tee -a "$LOG"
fi

# Built in place for this GPU's architecture only, on every core, or the library taken from the
# wheel into place (the stable ABI lets a build made against another torch run here); the dry run
# uses the installed ddet_ops, as CI installs it.
[ "$DRY" -eq 1 ] || export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$WHEEL" ]; then
  step unpack-wheel 30 "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('ddet_ops/_C.abi3.so', sys.argv[2])" \
    "$WHEEL" "$REPO"
  skip resources "prebuilt wheel: its build log has the -Xptxas -v lines"
else
  gpu_step build 150 env TORCH_CUDA_ARCH_LIST="${ARCH:-}" FORCE_CUDA=1 MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --inplace
  # Registers, stack frame and spills of every kernel, from the build's -Xptxas -v lines.
  gpu_step resources 10 "$PY" tools/ptxas_report.py "$LOG"
fi

# Every dtype against float64, CPU agreement, determinism, > 2^31 elements, both kernel versions.
CUDA_TESTS=("$REPO/tests/test_ops_cuda.py" -m cuda -q -p no:cacheprovider -x
  -k "every_dtype or agrees_with_cpu or agree_with_the_cpu or deterministic or 2_to_the_31 or kernel_versions")
if [ "$DRY" -eq 1 ]; then
  step cuda-tests-collect 60 env -C "$OUT" "$PY" -m pytest "${CUDA_TESTS[@]}" --collect-only
else
  step cuda-tests 50 env -C "$OUT" "$PY" -m pytest "${CUDA_TESTS[@]}"
fi

DRY_FLAG=(); [ "$DRY" -eq 1 ] && DRY_FLAG=(--dry-run)
step timings-v1 30 env DDET_OPS_CUDA_KERNELS=v1 "$PY" tools/gpu_timings.py kernels --json "$OUT/kernels-v1.json" "${DRY_FLAG[@]}"
step timings-v2 30 env DDET_OPS_CUDA_KERNELS=v2 "$PY" tools/gpu_timings.py kernels --json "$OUT/kernels-v2.json" "${DRY_FLAG[@]}"
step peers 120 "$PY" tools/gpu_timings.py peers --json "$OUT/peers.json" "${DRY_FLAG[@]}"

# DRAM throughput, achieved occupancy and stall reasons of the v2 kernels on the headline case.
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ "$DRY" -eq 1 ]; then
  skip ncu "dry run, needs a GPU"
elif [ -z "$NCU" ]; then
  skip ncu "ncu not found"
else
  before=$status
  step ncu 30 "$NCU" --clock-control none --target-processes all --kernel-name-base demangled -k "regex:v2" --launch-skip 0 \
    --launch-count 6 --section SpeedOfLight --section Occupancy --section WarpStateStats --csv --page details \
    --log-file "$OUT/ncu.csv" "$PY" tools/ncu_case.py
  if grep -q "ERR_NVGPUCTRPERM\|LibraryNotLoaded\|not supported" "$OUT/ncu.csv" 2>/dev/null; then
    SUMMARY[-1]="| ncu | skipped: counters not readable here | - |"; status=$before
  fi
fi

step summary 20 "$PY" tools/gpu_timings.py report --v1 "$OUT/kernels-v1.json" --v2 "$OUT/kernels-v2.json" \
  --peers "$OUT/peers.json" --markdown "$OUT/summary.md"
echo
echo "| step | result | time |"
echo "|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
echo "total $((SECONDS - START)) s of the ${BUDGET_S} s budget; files in $OUT"
exit $status
