#!/usr/bin/env bash
# One prepared device run (H100/H200): the two long trainings of the spec §6 protocol (T5 and the softmax baseline,
# `demo --train --train-only`), in parallel on the one GPU; everything else (the linear run, evaluation, export) is
# left to `demo --train` at home, which reuses these finished runs. Writes into $OUT one tar per transformer folder
# (fp32, ~9.6 MB each) and logs.tar.gz (train logs, run records, console logs). No checkpoints travel.
# Usage (device machine, repo root): bash packages/t5-linearize/scripts/device_protocol_train.sh LIMIT_S [DEMO ARGS]
# e.g. ... 200 --lr 3e-4 --new-lr-mult 10     then at home: untar into the demo's --output-dir and rerun demo --train
set -u
LIMIT_S=${1:?usage: device_protocol_train.sh LIMIT_S [demo --train args]}
shift
T0=$(date +%s)
OUT=${OUT:-/tmp/device-out}
RUN=/tmp/t5-protocol
mkdir -p "$OUT" "$RUN"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD/shared/src:$PWD/kernels/src:$PWD/packages/t5-linearize/src
export PYTHONUNBUFFERED=1 FLOWCORE_NO_PROGRESS=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for run in t5 softmax; do
  timeout "$LIMIT_S" python3 -m t5_linearize demo --train --device cuda --train-only "$run" --output-dir "$RUN" "$@" \
    > "$RUN/$run.log" 2>&1 &
done
wait
echo "== trainings done after $(( $(date +%s) - T0 )) s"
for run in t5 softmax; do echo "-- $run"; tail -n 4 "$RUN/$run.log"; wc -l < "$RUN/$run/train_log.jsonl"; done
for folder in "$RUN"/t5/transformer* "$RUN"/softmax/transformer; do
  [ -f "$folder/config.json" ] || continue
  run=$(basename "$(dirname "$folder")")
  [ "$run/$(basename "$folder")" = "t5/transformer-3000" ] && continue  # = t5/transformer (copied back at home)
  tar -cf "$OUT/$run-$(basename "$folder").tar" -C "$RUN" "$run/$(basename "$folder")"
done
tar -czf "$OUT/logs.tar.gz" -C "$RUN" --exclude='checkpoint-*' --exclude='transformer*' .
ls -la "$OUT"
echo "== total $(( $(date +%s) - T0 )) s"
