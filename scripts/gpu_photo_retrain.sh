#!/usr/bin/env bash
# Retrain the photo pipelines' models on one GPU, in one call of under 10 minutes.
#
# Stage 1 continues from the bundled autoencoder for 10,071 steps of 64 crops in
# bf16. A changed encoder voids the models trained on its features, so the
# entropy model (photo/) and the editing HVAE (photo-edit/) are then trained
# afresh on the new features, in fp32 (their CPU recipes' precision). The step
# counts are those of the bundled models (checkpoints/README.md), which took
# 257 s, 104 s and 137 s on an H200.
#
# Prepared beforehand: the training pictures as JPEG q90, 4:4:4, in
# .gpu/photos-train (the PNGs are too large to carry to the device), and in
# .whl the wheels the device image lacks (diffusers, importlib_metadata,
# constriction). Each model comes back under $OUT as a tar file as soon as it is
# saved, so a stage that fails or runs out of time loses only itself.
set -u
WORK=/tmp/retrain
DATA=${DATA:-.gpu/photos-train}
CACHE=$WORK/cache
AE_STEPS=${AE_STEPS:-10071} CODEC_STEPS=${CODEC_STEPS:-1729} EDIT_STEPS=${EDIT_STEPS:-2000}
# Smaller batches make a quick dry run on a CPU.
AE_BATCH=${AE_BATCH:-64} CODEC_BATCH=${CODEC_BATCH:-64} EDIT_BATCH=${EDIT_BATCH:-32}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
mkdir -p "$WORK/bin" "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }

# The device has no entry point installed.
printf '#!/bin/sh\nexec python3 -c "import sys; from hvae.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' \
    >"$WORK/bin/hvae"
chmod +x "$WORK/bin/hvae"
export PATH=$WORK/bin:$PATH

# Pack a saved run's model and logs into $OUT/NAME.tar, split into parts under
# the 16 MiB a returned file may have. It checks for the saved weights, not for
# the trainer's exit status: a process stopped while exiting still saved them.
pack() {
    local name=$1 dir=$2 weights=$3
    shift 3
    if [ ! -f "$dir/$weights" ]; then
        stamp "$name: no saved model in $dir"
        return 1
    fi
    tar -C "$dir" -cf "$WORK/$name.tar" "$weights" "$@" run/train_log.jsonl run/train_config.json &&
        split -b 15M -d "$WORK/$name.tar" "$OUT/$name.tar.part-"
    stamp "$name packed"
}

stamp "setup"
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch, diffusers, accelerate; print("torch", torch.__version__, "diffusers", diffusers.__version__, "accelerate", accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' || exit 1

stamp "stage 1: $AE_STEPS steps"
hvae train-autoencoder --data "$DATA" --init-from checkpoints/photo/autoencoder --crop 128 \
    --scales 1 0.5 0.25 --batch-size "$AE_BATCH" --lr 6e-4 --steps "$AE_STEPS" \
    --checkpoint-every 2500 --out "$WORK/photo-ae"
pack ae "$WORK/photo-ae" diffusion_pytorch_model.safetensors config.json || exit 1

stamp "entropy model: $CODEC_STEPS steps"
hvae train-codec --autoencoder "$WORK/photo-ae" --data "$DATA" --batch-size "$CODEC_BATCH" --lr 1e-3 \
    --steps "$CODEC_STEPS" --mixed-precision no --checkpoint-every 2500 --cache-dir "$CACHE" \
    --out "$WORK/photo-codec"
pack codec "$WORK/photo-codec" hvae/diffusion_pytorch_model.safetensors hvae/config.json model_index.json

stamp "editing HVAE: $EDIT_STEPS steps"
hvae train --autoencoder "$WORK/photo-ae" --data "$DATA" --preset base --image-size 128 \
    --crop-scales 0.25 0.125 --batch-size "$EDIT_BATCH" --lr 2e-3 --kl-weight 1.0 \
    --global-free-bits 3.0 --global-only-rate 0.5 --no-sample-prior --mixed-precision no \
    --steps "$EDIT_STEPS" --checkpoint-every 2500 --cache-dir "$CACHE" --out "$WORK/photo-edit"
pack edit "$WORK/photo-edit" hvae/diffusion_pytorch_model.safetensors hvae/config.json model_index.json
stamp "done"
ls -la "$OUT"
