#!/bin/sh
# Trains the bundled weights: DDet ×2, then ×3 and ×4 fine-tuned from it, and stores them as
# float16 in ddet/weights/. Safe to re-run after a kill: each run resumes from its last checkpoint.
set -e
cd "$(dirname "$0")/.."
for scale in 2 3 4; do
    out=runs/ddet_x$scale
    if [ ! -f "$out/model.safetensors" ]; then
        if [ -f "$out/checkpoints/latest" ]; then resume=--resume; else resume=--force; fi
        python -m ddet.cli train --config configs/ddet_x$scale.yaml $resume
    fi
    python -c "import sys; from ddet.weights import export_bundled; export_bundled(sys.argv[1], $scale)" "$out/model.safetensors"
done
