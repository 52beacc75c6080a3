#!/usr/bin/env bash
# One prepared GPU run (H100/H200) of the §6 toy protocol at the spec's lengths: the toy-sd3 edge ControlNet
# (3000 steps), the toy-sd3 outline network and prompt-level baseline (5000 steps each) on it, the toy-unet
# prompt-level baseline (5000 steps), then the full 64-scene eval-toy of both toys. The trainings run side by side
# (tiny models leave the GPU mostly idle); a training still running at its deadline is stopped and saved at its
# last checkpoint, so every network that comes back records the steps it really did.
#
# Usage (repo root, on the device machine; diffusers wheel in .whl/):
#   bash packages/style-attr/scripts/device_toy_runs.sh [TOTAL_S]
# Knobs for a CPU dry run: DEVICE=cpu CN_STEPS=4 ATTR_STEPS=4 SAVE_EVERY=2 EVAL_SCENES=2 EVAL_FLAGS=--quick
set -u
TOTAL_S=${1:-540}
T0=$(date +%s)
OUT=${OUT:-/tmp/style-attr-device-out}
W=${WORK:-/tmp/style-attr-device}
DEVICE=${DEVICE:-cuda}
CN_STEPS=${CN_STEPS:-3000}
ATTR_STEPS=${ATTR_STEPS:-5000}
SAVE_EVERY=${SAVE_EVERY:-250}
EVAL_SCENES=${EVAL_SCENES:-64}
EVAL_FLAGS=${EVAL_FLAGS:-}
CN_DEADLINE=${CN_DEADLINE:-170}        # seconds from start: later, the committed 400-step ControlNet is used
EVAL_S=${EVAL_S:-200}                  # seconds kept for the evaluations at the end
mkdir -p "$OUT" "$W"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD/shared/src:$PWD/kernels/src:$PWD/packages/style-attr/src:$PWD/packages/directedit/src
fi
export PYTHONUNBUFFERED=1 FLOWCORE_NO_PROGRESS=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
PY=${PYTHON:-python3}
SA=("$PY" -m style_attr)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"

"${SA[@]}" build-dataset --toy 1024 --family outline --output-dir "$W/outline-data" > "$W/dataset.log" 2>&1 \
  || { cat "$W/dataset.log"; exit 4; }
log "dataset built"

train() {  # train NAME ARGS...: background training with checkpoints, log in $W/NAME.log
  local name=$1; shift
  "${SA[@]}" train --data "$W/outline-data" --steps "$ATTR_STEPS" --save-every "$SAVE_EVERY" --device "$DEVICE" \
    --save-dtype float16 --output-dir "$W/$name" "$@" > "$W/$name.log" 2>&1 &
  echo $! > "$W/$name.pid"
}
finish() {  # finish NAME ARGS...: stop a training still running and save it at its last checkpoint
  local name=$1; shift
  local pid; pid=$(cat "$W/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; wait "$pid" 2>/dev/null
    local last; last=$(ls -d "$W/$name"/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -1)
    if [ -n "$last" ]; then
      log "$name stopped; saving it at step $last"
      "${SA[@]}" train --data "$W/outline-data" --steps "$last" --resume --device "$DEVICE" --save-dtype float16 \
        --output-dir "$W/$name" "$@" >> "$W/$name.log" 2>&1 || log "$name: save at $last failed"
    else
      log "$name stopped before its first checkpoint"
    fi
  else
    wait "$pid" 2>/dev/null
    log "$name finished: $(tail -c 300 "$W/$name.log" | tr '\n' ' ')"
  fi
}

# 1. the toy-sd3 edge ControlNet (CN_STEPS=0: keep the committed one) and, beside it, the toy-unet baseline
train toy-unet-outline-baseline --model toy-unet --baseline prompt-level
CN_ARGS=()
if [ "$CN_STEPS" -gt 0 ]; then
  "${SA[@]}" train-controlnet --model toy-sd3 --steps "$CN_STEPS" --device "$DEVICE" \
    --output-dir "$W/toy-sd3-controlnet" > "$W/toy-sd3-controlnet.log" 2>&1 &
  CN_PID=$!
  while kill -0 $CN_PID 2>/dev/null && [ "$(elapsed)" -lt "$CN_DEADLINE" ]; do sleep 2; done
fi
if [ "$CN_STEPS" -le 0 ]; then
  log "toy-sd3 ControlNet: the committed one"
elif kill -0 $CN_PID 2>/dev/null; then
  kill $CN_PID; log "ControlNet not done by ${CN_DEADLINE}s: the attribute networks use the committed one"
elif wait $CN_PID && [ -f "$W/toy-sd3-controlnet/config.json" ]; then
  CN_ARGS=(--controlnet "$W/toy-sd3-controlnet"); log "ControlNet trained ($CN_STEPS steps)"
else
  log "ControlNet training failed:"; tail -n 30 "$W/toy-sd3-controlnet.log"
fi

# 2. the toy-sd3 outline network and its prompt-level baseline on that ControlNet
train toy-sd3-outline --model toy-sd3 "${CN_ARGS[@]}"
train toy-sd3-outline-baseline --model toy-sd3 --baseline prompt-level "${CN_ARGS[@]}"
END_TRAIN=$(( TOTAL_S - EVAL_S ))
all_done() { for n in toy-unet-outline-baseline toy-sd3-outline toy-sd3-outline-baseline; do
  kill -0 "$(cat "$W/$n.pid")" 2>/dev/null && return 1; done; return 0; }
while ! all_done && [ "$(elapsed)" -lt "$END_TRAIN" ]; do sleep 3; done
finish toy-unet-outline-baseline --model toy-unet --baseline prompt-level
finish toy-sd3-outline --model toy-sd3 "${CN_ARGS[@]}"
finish toy-sd3-outline-baseline --model toy-sd3 --baseline prompt-level "${CN_ARGS[@]}"

# 3. the §6 table on both toys, side by side, with what is left
LEFT=$(( TOTAL_S - $(elapsed) - 25 ))
log "evaluating with ${LEFT}s left"
ASSETS=packages/style-attr/src/style_attr/assets/toy
evaluate() {  # evaluate TOY ATTR BASELINE
  timeout "$LEFT" "${SA[@]}" eval-toy --model "$1" --attr "$2" --baseline "$3" --scenes "$EVAL_SCENES" $EVAL_FLAGS \
    --device "$DEVICE" --output-dir "$W/eval-$1" --json "$W/eval-$1.json" > "$W/eval-$1.log" 2>&1
  log "eval $1 exit $?"
}
if [ "$LEFT" -gt 30 ]; then
  evaluate toy-sd3 "$W/toy-sd3-outline" "$W/toy-sd3-outline-baseline" &
  evaluate toy-unet "$ASSETS/toy-unet-outline" "$W/toy-unet-outline-baseline" &
  wait
fi

# 4. what comes back: the networks (tar) and the logs and tables (tar.gz)
# (two tars: each file that comes back must stay under 16 MiB)
tar -cf "$OUT/toy-sd3-networks.tar" -C "$W" --exclude='checkpoint-*' toy-sd3-controlnet toy-sd3-outline 2>/dev/null
tar -cf "$OUT/baselines.tar" -C "$W" --exclude='checkpoint-*' toy-sd3-outline-baseline toy-unet-outline-baseline \
  2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$W" --exclude='*.safetensors' --exclude='checkpoint-*' --exclude=outline-data . 2>/dev/null
for f in "$W"/eval-*.log; do echo "== $f"; tail -n 25 "$f"; done
ls -la "$OUT"
log "total"
