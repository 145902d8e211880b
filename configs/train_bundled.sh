#!/bin/sh
# Trains the bundled weights and stores them as float16 in ddet/weights/:
# DDet ×2 in six stages (L1, then five more cosine cycles with L2, the last three in bfloat16
# autocast; the sixth on a wider set of photographs), then ×3 and ×4 fine-tuned from stage 6.
# Stage 6 and ×3/×4 need Debian's opencv-doc package (apt-get install opencv-doc) for
# tools/training_photos.py. Safe to re-run after a kill: a finished run is skipped, an
# unfinished one resumes.
set -e
cd "$(dirname "$0")/.."
run() {  # run CONFIG OUT
    if [ ! -f "$2/model.safetensors" ]; then
        if [ -f "$2/checkpoints/latest" ]; then resume=--resume; else resume=--force; fi
        python -m ddet.cli train --config "$1" $resume
    fi
}
export_bundled() {  # export_bundled OUT SCALE
    python -c "import sys; from ddet.weights import export_bundled; export_bundled(sys.argv[1], int(sys.argv[2]))" "$1/model.safetensors" "$2"
}
run configs/ddet_x2.yaml runs/ddet_x2
run configs/ddet_x2_stage2.yaml runs/ddet_x2_stage2
run configs/ddet_x2_stage3.yaml runs/ddet_x2_stage3
run configs/ddet_x2_stage4.yaml runs/ddet_x2_stage4
run configs/ddet_x2_stage5.yaml runs/ddet_x2_stage5
[ -d runs/photos ] || python tools/training_photos.py runs/photos
run configs/ddet_x2_stage6.yaml runs/ddet_x2_stage6
export_bundled runs/ddet_x2_stage6 2
for scale in 3 4; do
    run configs/ddet_x$scale.yaml runs/ddet_x$scale
    export_bundled runs/ddet_x$scale $scale
done
