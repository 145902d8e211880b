#!/usr/bin/env bash
# Times the v2 kernels built with each register budget (DDET_V2_MIN_BLOCKS_PER_SM, see
# csrc/cuda/v2_kernels.cuh) in one GPU session: per value, an in-place build for this GPU, the
# every-dtype CUDA tests, the raw-op timings of tools/gpu_timings.py, the ptxas resource report.
#   OUT=dir tools/gpu_sweep.sh 2 3 4      on the GPU machine, from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
[ "$#" -gt 0 ] || { echo "usage: tools/gpu_sweep.sh MIN_BLOCKS..." >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
status=0
for blocks in "$@"; do
  log="$OUT/sweep-$blocks.log"
  echo "=== DDET_V2_MIN_BLOCKS_PER_SM=$blocks" | tee "$log"
  DDET_OPS_NVCC_FLAGS="-DDDET_V2_MIN_BLOCKS_PER_SM=$blocks" TORCH_CUDA_ARCH_LIST=$ARCH FORCE_CUDA=1 \
    MAX_JOBS="$(nproc)" "$PY" setup.py -q build_ext --inplace >> "$log" 2>&1 || { echo "build failed"; status=1; continue; }
  "$PY" tools/ptxas_report.py "$log" | grep -E "v2::|ptxas_report" | cut -c1-160
  (cd "$OUT" && "$PY" -m pytest "$OLDPWD/tests/test_ops_cuda.py" -m cuda -q -p no:cacheprovider -x -k every_dtype) \
    | tail -n 1 || status=1
  DDET_OPS_CUDA_KERNELS=v2 "$PY" tools/gpu_timings.py kernels --json "$OUT/sweep-$blocks.json" | tee -a "$log" || status=1
done
exit $status
