#!/usr/bin/env bash
# Train the classroom model on this machine's CPU, score it, and ship it if it beats the shipped model
# (scripts/ship_classroom_model.py): one command, resumable (run it again after an interruption; it goes on from
# the last checkpoint).
#
#   bash scripts/train_classroom_cpu.sh                  # the shipped model, from scratch: the grounded preset,
#                                                        # 55 min of UNet training on 2 cores, ~60 in all
#   PRESET="grounded grounded-relation grounded-mix" bash scripts/train_classroom_cpu.sh  # the same with the
#                                                    # relation curriculum and the mix after it: 97 min in all
#   PRESET="scratch scratch-relation scratch-mix" bash scripts/train_classroom_cpu.sh  # that chain without
#                                                    # the grounding loss: 90 UNet min, ~100 in all
#   PRESET=v3 bash scripts/train_classroom_cpu.sh        # v3: 140 min of UNet training, ~150 in all
#   PRESET=v3-text bash scripts/train_classroom_cpu.sh   # v3 grown a text layer: 65 more min, ~90 in all
#   PRESET=v3-mirror bash scripts/train_classroom_cpu.sh # v3-text on relation pairs: 60 more min (not shipped)
#   PRESET=v3-batch bash scripts/train_classroom_cpu.sh  # v3-text at batch 512: 75 more min
#   PRESET=v3-relation bash scripts/train_classroom_cpu.sh      # the relation curriculum: 8 min from v3-batch
#   PRESET=v3-relation-mix bash scripts/train_classroom_cpu.sh  # then every kind of scene again: 25 min
#
# PRESET may name a chain of presets: each later one starts from the EMA weights of the one before it
# (--init-from), whose checkpoint is RUN/<preset>/ckpt; the last one's is RUN/ckpt, scored and shipped.
# Run it alone: no test suite or notebook beside it (they would take most of its samples). Two one-thread
# processes under torchrun (`benchmarks/classroom_train_speed.py`: 1.9x one process on this 2-core CPU).
# RUN (default runs/classroom_<preset>, git-ignored) keeps the checkpoint, the snapshots, log.txt and the scores.
# MINUTES overrides the (last) preset's UNet minutes; TINY=1 runs every stage at toy size (a typo check, ~2 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-grounded}  # a preset of diffviz.classroom.train, or a chain of them
read -r -a CHAIN <<< "$PRESET"
NAME=classroom_${CHAIN[0]//-/_}
RUN=${RUN:-runs/$NAME}
mkdir -p "$RUN"
# A run that a session had to stop is committed under checkpoints/ (the optimiser state and the snapshots'
# scores, not the latents, which are re-encoded in a few minutes), a chain's stages in a folder each: a fresh
# RUN goes on from there. (A folder that keeps only EMA weights, for another run's --init-from, has no
# progress.json and is not resumed.)
FROM=${FROM:-checkpoints/$NAME}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "${TINY:-0}" = 1 ]; then
    TRAIN="--n-scenes 64 --channels 32,64 --ship-every 0.02"
    SCORE="--seeds 1 --loc-prompts 1 --steps 2"
    SNAPSHOT="--seeds 1 --loc-prompts 1 --steps 2"
else
    TRAIN=""
    SCORE="--seeds 2 --loc-prompts 30"
    SNAPSHOT="--seeds 1 --loc-prompts 10"
fi

FROM_STAGE=""
for stage in "${CHAIN[@]}"; do
    CKPT="$RUN/$stage/ckpt"; COMMITTED="$FROM/$stage"; MIN=""
    [ ${#CHAIN[@]} = 1 ] && COMMITTED="$FROM"
    if [ "$stage" = "${CHAIN[-1]}" ]; then CKPT="$RUN/ckpt"; MIN="${MINUTES:+--max-minutes $MINUTES}"; fi
    [ "${TINY:-0}" = 1 ] && MIN="--max-minutes ${MINUTES:-0.05}"
    if [ ! -d "$CKPT/state" ] && [ -f "$COMMITTED/state/progress.json" ] && [ "${TINY:-0}" != 1 ]; then
        mkdir -p "$CKPT" && cp -r "$COMMITTED"/. "$CKPT/" && echo "resuming $COMMITTED"
        if [ -d "$CKPT/model" ]; then mv "$CKPT/model" "$RUN/model"; fi  # a finished run's model: scored, shipped
    fi
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m diffviz.classroom.train --preset "$stage" \
        ${FROM_STAGE:+--init-from "$FROM_STAGE"} $TRAIN $MIN --ckpt "$CKPT" --weights "$RUN/model" 2>&1 \
        | tee -a "$RUN/log.txt"
    FROM_STAGE="$CKPT"
done

# the learning curve: each snapshot of each stage on the held-out prompts
for snap in "$RUN"/ckpt/snapshots/step_* "$RUN"/*/ckpt/snapshots/step_*; do
    [ -d "$snap" ] || continue  # a pattern that matched nothing
    [ -f "$snap/quality.json" ] || python benchmarks/classroom_quality.py --weights "$snap" --threads 2 \
        $SNAPSHOT --json "$snap/quality.json" >/dev/null
done
python benchmarks/classroom_quality.py --weights "$RUN/model" --threads 2 $SCORE --json "$RUN/quality.json"
[ -f "$RUN/quality_shipped.json" ] || python benchmarks/classroom_quality.py --threads 2 $SCORE --json "$RUN/quality_shipped.json"
CURVE="diffviz/classroom/weights/learning_curve_${CHAIN[0]}.png"; [ "${TINY:-0}" = 1 ] && CURVE="$RUN/learning_curve.png"
python scripts/plot_learning_curve.py "$RUN" --out "$CURVE" --reference "shipped=$RUN/quality_shipped.json" \
    || echo "no learning-curve picture (plotly's PNG export needs kaleido and a Chromium)"
DRY=""; [ "${TINY:-0}" = 1 ] && DRY="--dry-run"
python scripts/ship_classroom_model.py "$RUN" $DRY
