#!/usr/bin/env bash
# Train on one lent GPU, in one call of under 10 minutes, two runs side by side (the models
# are small, so one run leaves most of an H200 idle):
#   ae   stage 1 (reconstruction) continued from the bundled autoencoder on the natural-photo
#        corpus, the candidate for photo-edit/;
#   e2e  the photo codec (stage 1 + entropy model) trained end to end on rate + distortion
#        (hvae train-codec --end-to-end), the candidate for photo/.
# Each run first probes its step time for 50 steps, then takes the steps that TRAIN_SECONDS
# allows, so that its learning-rate schedule ends where the run does.
#
# Prepared beforehand (scripts/prepare_gpu_carry.py): one WebP crop per training picture in
# .gpu/corpus, and in .whl the wheels the device image lacks (diffusers, importlib_metadata,
# zipp, constriction). Each model comes back under $OUT as a tar file split into parts under
# the 16 MiB a returned file may have; a run that fails loses only itself.
set -u
WORK=/tmp/retrain
DATA=${DATA:-.gpu/corpus}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}
AE_BATCH=${AE_BATCH:-64} E2E_BATCH=${E2E_BATCH:-16}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
mkdir -p "$WORK/bin" "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }

# The device has no entry point installed.
printf '#!/bin/sh\nexec python3 -P -c "import sys; from hvae.cli import main; sys.exit(main(sys.argv[1:]))" "$@"\n' \
    >"$WORK/bin/hvae"
chmod +x "$WORK/bin/hvae"
export PATH=$WORK/bin:$PATH

stamp "setup"
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The code to run: a snapshot in CODE when one was prepared (the working tree may hold
# others' unfinished edits), else the checkout. -P keeps the current folder off sys.path.
CODE=${CODE:-.gpu/code}
[ -d "$CODE/hvae" ] || CODE=.
export PYTHONPATH=/tmp/site:$(cd "$CODE" && pwd)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -P -c 'import hvae, torch, diffusers, accelerate, constriction; print("torch", torch.__version__, "diffusers", diffusers.__version__, "accelerate", accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU", "code", hvae.__file__)' || exit 1

AE_ARGS=(train-autoencoder --data "$DATA" --init-from checkpoints/photo/autoencoder --crop 128
    --scales 1 0.5 --batch-size "$AE_BATCH" --lr 4e-4)
E2E_ARGS=(train-codec --end-to-end --init-from checkpoints/photo --data "$DATA" --crop 24
    --scales 1 0.5 --batch-size "$E2E_BATCH" --lr 2e-4)

# Seconds per step between the log's 25th and 50th step, so loading is not counted.
seconds_per_step() {
    python3 -c 'import json, sys
rows = {r["step"]: r["seconds"] for r in map(json.loads, open(sys.argv[1]))}
print((rows[50] - rows[25]) / 25)' "$1/run/train_log.jsonl"
}

stamp "probing step times (both runs at once, as they will train)"
# Each wait names its processes: a bare `wait` would also wait for the tee above.
hvae "${AE_ARGS[@]}" --steps 50 --out "$WORK/probe-ae" --no-resume >"$WORK/probe-ae.log" 2>&1 &
PROBE_AE=$!
hvae "${E2E_ARGS[@]}" --steps 50 --out "$WORK/probe-e2e" --no-resume >"$WORK/probe-e2e.log" 2>&1 &
wait $PROBE_AE $!
AE_SPS=$(seconds_per_step "$WORK/probe-ae") || { tail -20 "$WORK/probe-ae.log"; exit 1; }
E2E_SPS=$(seconds_per_step "$WORK/probe-e2e") || { tail -20 "$WORK/probe-e2e.log"; exit 1; }
AE_STEPS=$(python3 -c "print(int($TRAIN_SECONDS / $AE_SPS))")
E2E_STEPS=$(python3 -c "print(int($TRAIN_SECONDS / $E2E_SPS))")
stamp "stage 1: $AE_SPS s/step -> $AE_STEPS steps; end to end: $E2E_SPS s/step -> $E2E_STEPS steps"

pack() {
    local name=$1 dir=$2
    shift 2
    for f in "$@"; do
        [ -f "$dir/$f" ] || { stamp "$name: $dir/$f missing"; return 1; }
    done
    tar -C "$dir" -cf "$WORK/$name.tar" "$@" run/train_log.jsonl run/train_config.json &&
        split -b 15M -d "$WORK/$name.tar" "$OUT/$name.tar.part-"
    stamp "$name packed"
}

(hvae "${AE_ARGS[@]}" --steps "$AE_STEPS" --checkpoint-every 2500 --out "$WORK/ae" &&
    pack ae "$WORK/ae" diffusion_pytorch_model.safetensors config.json) &
RUN_AE=$!
(hvae "${E2E_ARGS[@]}" --steps "$E2E_STEPS" --checkpoint-every 2500 --out "$WORK/e2e" &&
    pack e2e "$WORK/e2e" model_index.json autoencoder/config.json \
        autoencoder/diffusion_pytorch_model.safetensors hvae/config.json \
        hvae/diffusion_pytorch_model.safetensors) &
wait $RUN_AE $!
stamp "done"
ls -la "$OUT"
