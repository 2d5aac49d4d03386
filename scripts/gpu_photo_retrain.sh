#!/usr/bin/env bash
# Retrain the photo pipelines' models on a lent GPU in one call of fixed length.
#
# Stage 1 continues from the bundled autoencoder; the entropy model (photo/) and
# the editing HVAE (photo-edit/) are then retrained on the new features, because
# a changed encoder voids both. Each stage first times a short probe run, then
# takes as many steps as its share of the remaining time allows, so the call
# ends inside the device's time limit whatever the GPU's speed turns out to be.
# The step counts it chose are printed and recorded in each run's train_config.json.
#
# Prepared here (see checkpoints/README.md): the training pictures as JPEG q90,
# 4:4:4, in .gpu/photos-train (the PNGs are too large to carry), and the wheels
# the device image lacks in .whl. Results come back under $OUT as tar files.
set -u
LIMIT_S=${LIMIT_S:-555}
T0=$(date +%s)
DEADLINE=$((T0 + LIMIT_S))
DATA=.gpu/photos-train
WORK=/tmp/retrain
CACHE=/tmp/retrain-cache
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

left() { echo $((DEADLINE - $(date +%s))); }
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
# The device has no entry point installed; a script (not a function) so that `timeout` can run it.
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec python3 -c "import sys; from hvae.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' \
    >"$WORK/bin/hvae"
chmod +x "$WORK/bin/hvae"
export PATH=$WORK/bin:$PATH
# Smaller values make a quick dry run on a CPU.
PROBE_STEPS=${PROBE_STEPS:-75} STEP_CAP=${STEP_CAP:-40000}
AE_BATCH=${AE_BATCH:-64} CODEC_BATCH=${CODEC_BATCH:-64} EDIT_BATCH=${EDIT_BATCH:-32}

# Steps that fit BUDGET seconds at the rate a probe's log shows (its last two records), capped.
steps_for() {
    python3 - "$@" <<'EOF'
import json, sys
budget, log, cap = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
records = [json.loads(line) for line in open(log) if line.strip()]
a, b = records[-2], records[-1]
per_step = (b["seconds"] - a["seconds"]) / (b["step"] - a["step"])
print(min(cap, max(100, int(budget / per_step))))
print(f"probe: {per_step * 1000:.1f} ms/step", file=sys.stderr)
EOF
}

# Pack a run folder's small files into $OUT/NAME.tar (split when over 15 MiB).
pack() {
    local name=$1 dir=$2
    shift 2
    tar -C "$dir" -cf "$WORK/$name.tar" "$@" && split -b 15M -d "$WORK/$name.tar" "$OUT/$name.tar.part-"
    ls -la "$OUT"
}

stamp "setup"
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch, diffusers, accelerate; print("torch", torch.__version__, "diffusers", diffusers.__version__, "accelerate", accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' || exit 1

AE_ARGS=(--data "$DATA" --init-from checkpoints/photo/autoencoder --crop 128 --scales 1 0.5 0.25
    --batch-size "$AE_BATCH" --lr 6e-4 --cache-dir "$CACHE")
stamp "stage 1 probe"
hvae train-autoencoder "${AE_ARGS[@]}" --out "$WORK/probe-ae" --steps "$PROBE_STEPS" --checkpoint-every 100000 \
    || exit 1
AE_STEPS=$(steps_for $(($(left) - 230)) "$WORK/probe-ae/run/train_log.jsonl" "$STEP_CAP")
stamp "stage 1: $AE_STEPS steps"
timeout $(($(left) - 170)) hvae train-autoencoder "${AE_ARGS[@]}" --out "$WORK/photo-ae" \
    --steps "$AE_STEPS" --checkpoint-every 2500 || { stamp "stage 1 failed"; exit 1; }
pack ae "$WORK/photo-ae" config.json diffusion_pytorch_model.safetensors run/train_log.jsonl \
    run/train_config.json
stamp "stage 1 done"

CODEC_ARGS=(--autoencoder "$WORK/photo-ae" --data "$DATA" --batch-size "$CODEC_BATCH" --lr 1e-3
    --mixed-precision no --cache-dir "$CACHE")
stamp "codec probe"
if hvae train-codec "${CODEC_ARGS[@]}" --out "$WORK/probe-codec" --steps "$PROBE_STEPS" --checkpoint-every 100000; then
    CODEC_STEPS=$(steps_for $(($(left) - 115)) "$WORK/probe-codec/run/train_log.jsonl" "$STEP_CAP")
    stamp "codec: $CODEC_STEPS steps"
    timeout $(($(left) - 95)) hvae train-codec "${CODEC_ARGS[@]}" --out "$WORK/photo-codec" \
        --steps "$CODEC_STEPS" --checkpoint-every 2500 &&
        pack codec "$WORK/photo-codec" hvae model_index.json run/train_log.jsonl run/train_config.json
fi
stamp "codec done"

EDIT_ARGS=(--autoencoder "$WORK/photo-ae" --data "$DATA" --preset base --image-size 128
    --crop-scales 0.25 0.125 --batch-size "$EDIT_BATCH" --lr 2e-3 --kl-weight 1.0 --global-free-bits 3.0
    --global-only-rate 0.5 --no-sample-prior --mixed-precision no --cache-dir "$CACHE")
stamp "editing HVAE probe"
if hvae train "${EDIT_ARGS[@]}" --out "$WORK/probe-edit" --steps "$PROBE_STEPS" --checkpoint-every 100000; then
    EDIT_STEPS=$(steps_for $(($(left) - 25)) "$WORK/probe-edit/run/train_log.jsonl" "$STEP_CAP")
    stamp "editing HVAE: $EDIT_STEPS steps"
    timeout $(($(left) - 8)) hvae train "${EDIT_ARGS[@]}" --out "$WORK/photo-edit" \
        --steps "$EDIT_STEPS" --checkpoint-every 2500 &&
        pack edit "$WORK/photo-edit" hvae model_index.json run/train_log.jsonl run/train_config.json
fi
stamp "all done"
