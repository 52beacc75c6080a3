#!/usr/bin/env bash
# One prepared device run (H100/H200): the spec §6 protocol (`t5-linearize demo --train`, full preset, 512 prompts)
# once per recipe, all in parallel on the one GPU; the base lr and the new-parameter multiplier are "our choice"
# (spec §3), the softmax baseline of each run gets the same base lr. Writes into $OUT: sweep.tar.gz (every run's
# report, summary and train logs, plus the side-by-side ratio table) and assets-<run>.tar for the two runs with the
# lowest final loss ratio (the fp16 T5 + softmax assets `demo` evaluates).
# Usage (device machine, repo root): bash packages/t5-linearize/scripts/device_protocol_sweep.sh LIMIT_S LR:MULT...
# e.g. ... 420 1e-4:10 1e-4:30 3e-4:10   (each run is killed after LIMIT_S; its train logs still come back)
set -u
LIMIT_S=${1:?usage: device_protocol_sweep.sh LIMIT_S LR:MULT [LR:MULT ...]}
shift
T0=$(date +%s)
OUT=${OUT:-/tmp/device-out}
WORK=/tmp/t5-sweep
mkdir -p "$OUT" "$WORK"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD/shared/src:$PWD/kernels/src:$PWD/packages/t5-linearize/src
fi
export PYTHONUNBUFFERED=1 FLOWCORE_NO_PROGRESS=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# a 50-step smoke run of the whole protocol on the GPU first: a device bug shows here, not after minutes
if ! timeout 120 python3 -m t5_linearize demo --train --preset ci --device cuda --no-export \
    --output-dir "$WORK/smoke" > "$WORK/smoke.log" 2>&1; then
  echo "smoke run failed:"; tail -n 30 "$WORK/smoke.log"
  tar -czf "$OUT/sweep.tar.gz" -C "$WORK" smoke.log; exit 4
fi
echo "== smoke run ok after $(( $(date +%s) - T0 )) s"
RUNS=()
for spec in "$@"; do
  lr=${spec%%:*}; mult=${spec##*:}; name="lr${lr}-x${mult}"; RUNS+=("$WORK/$name")
  timeout "$LIMIT_S" python3 -m t5_linearize demo --train --device cuda --lr "$lr" --new-lr-mult "$mult" \
    --output-dir "$WORK/$name" --export-assets "$WORK/$name/assets" --json "$WORK/$name/summary.json" \
    > "$WORK/$name.log" 2>&1 &
done
wait
echo "== protocol runs done after $(( $(date +%s) - T0 )) s"
for r in "${RUNS[@]}"; do echo "-- $(basename "$r")"; tail -n 3 "$r.log"; done
python3 packages/t5-linearize/scripts/protocol_sweep_summary.py "${RUNS[@]}" --json "$WORK/sweep.json" \
  | tee "$WORK/sweep.txt"
# keep the two best finished runs' assets (by the final loss ratio)
python3 - "$WORK/sweep.json" > "$WORK/best.txt" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if (r["acceptance"] or {}).get("A3")]
rows.sort(key=lambda r: r["acceptance"]["A3"]["loss_ratio"])
print("\n".join(r["run"] for r in rows[:2]))
PY
for name in $(cat "$WORK/best.txt"); do
  [ -d "$WORK/$name/assets" ] && tar -cf "$OUT/assets-$name.tar" -C "$WORK/$name" assets
done
(cd "$WORK" && tar -czf "$OUT/sweep.tar.gz" --exclude='checkpoint-*' --exclude='transformer*' --exclude='assets' \
  --exclude='*.safetensors' .)
ls -la "$OUT"
echo "== total $(( $(date +%s) - T0 )) s"
