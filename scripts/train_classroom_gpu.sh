#!/usr/bin/env bash
# Train the classroom model v2 on one GPU, score its learning curve, and pack the result: one command.
#
#   device tool:  run(command="bash scripts/train_classroom_gpu.sh", carry=[".whl"], timeout_s=600)
#   afterwards:   python scripts/unpack_classroom_run.py <files_at>     (here, puts the weights in the package)
#
# .whl (git-ignored) holds the wheels the GPU image lacks; fetch them once with scripts/fetch_device_wheels.sh.
# Budget (H200): ~1 min start, speed benchmark ~1 min, VAE stage and latent precompute ~1 min, then MINUTES of
# UNet training (default 7), snapshot scoring ~2 min. TINY=1 runs every stage at toy size on the CPU (a typo
# check).
# Leaves in $OUT: speed.txt, log.txt, curve.json (quality per snapshot), weights.tar (the model without its
# UNet weights) and unet.safetensors (each file under the device tool's 16 MiB limit).
set -euo pipefail
OUT=${OUT:-/tmp/classroom_out}
MINUTES=${MINUTES:-7}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK=${WORK:-/tmp/classroom_run}
rm -rf "$WORK"

if [ "${TINY:-0}" = 1 ]; then
    DEV="--device cpu --threads 1"
    SPEED="--device cpu --steps 1 --rounds 1 --quick"
    TRAIN="--vae-steps 2 --vae-batch 4 --n-scenes 64 --batch 8 --steps 4 --log-every 2"
    SCORE="--seeds 1 --loc-prompts 1 --steps 2"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    DEV="--device cuda"
    SPEED="--device cuda --batch 1024 --steps 20 --rounds 3"
    TRAIN="--vae-steps 300 --vae-batch 256 --vae-lr 3e-4 --n-scenes 300000 --batch 1024 --lr 1e-3 --warmup 300"
    TRAIN="$TRAIN --max-minutes $MINUTES --ship-every 1.5 --save-every 1000"
    SCORE="--seeds 1 --loc-prompts 10"
fi

python3 benchmarks/classroom_train_speed.py --image-size 64 $SPEED 2>&1 | tee "$OUT/speed.txt"
python3 -m diffviz.classroom.train $DEV --image-size 64 --init-vae diffviz/classroom/weights/vae $TRAIN \
    --weights "$WORK/weights" --ckpt "$WORK/ckpt" 2>&1 | tee "$OUT/log.txt"

for snap in "$WORK"/ckpt/snapshots/step_*; do  # the learning curve: each snapshot on the held-out prompts
    python3 benchmarks/classroom_quality.py --weights "$snap" $DEV $SCORE --json "$snap/quality.json" \
        2>&1 | grep -v "^  diagnostics" | sed "s|^|$(basename "$snap"): |" | tee -a "$OUT/log.txt"
done
python3 - "$WORK" "$OUT/curve.json" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
curve = [dict(step=int(p.parent.name.split("_")[1]), **json.loads(p.read_text()))
         for p in sorted(work.glob("ckpt/snapshots/step_*/quality.json"))]
out.write_text(json.dumps({"snapshots": curve, "training_log": json.loads((work / "weights/training_log.json").read_text())}))
print(f"curve: {len(curve)} snapshots -> {out}")
EOF
cp "$WORK/weights/unet/diffusion_pytorch_model.safetensors" "$OUT/unet.safetensors"
tar -C "$WORK/weights" --exclude=unet/diffusion_pytorch_model.safetensors -cf "$OUT/weights.tar" .
ls -la "$OUT"
