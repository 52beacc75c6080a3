#!/usr/bin/env bash
# One prepared device run (H100/H200): train every toy model with gpu_train_all.py, then time the TTT kernels
# with whatever time is left. Writes at most 8 files into $OUT (weights tars + one meta tarball).
# Usage (on the device machine, repo root): bash shared/scripts/device_train_and_bench.sh TRAIN_MIN TOTAL_S [ARGS...]
# ARGS go to gpu_train_all.py instead of the default "--clip-first-s 50" (e.g. a warm-started continuation:
# --warm-root shared/src/flowcore/toy/weights --skip toy-sd3).
set -u
TRAIN_MIN=${1:-7.3}
TOTAL_S=${2:-575}
shift 2 2>/dev/null || shift $#
TRAIN_ARGS=("$@")
[ ${#TRAIN_ARGS[@]} -eq 0 ] && TRAIN_ARGS=(--clip-first-s 50)
T0=$(date +%s)
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/shared/src:$PWD/kernels/src || { echo "wheel install failed"; exit 3; }
export PYTHONUNBUFFERED=1 FLOWCORE_NO_PROGRESS=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name(0))"
WORK=/tmp/toy-gpu
timeout $(( ${TRAIN_MIN%.*} * 60 + 60 )) python3 shared/scripts/gpu_train_all.py --budget-min "$TRAIN_MIN" \
  "${TRAIN_ARGS[@]}" --out "$WORK" 2>&1 | tee /tmp/train.log | grep -v "^  " | tail -n 400
cp "$WORK"/pack/*.tar "$OUT"/ 2>/dev/null
mkdir -p /tmp/meta && cp "$WORK"/pack/MANIFEST.json "$WORK"/pack/summary.json "$WORK"/pack/logs.tar.gz /tmp/train.log /tmp/meta/ 2>/dev/null
LEFT=$(( TOTAL_S - ($(date +%s) - T0) - 15 ))
echo "== kernel benchmark with ${LEFT}s left"
if [ "$LEFT" -gt 40 ]; then
  timeout "$LEFT" python3 kernels/benchmarks/bench_ttt.py --check --budget-s $(( LEFT - 10 )) --out /tmp/meta/kbench 2>&1 \
    | tee /tmp/meta/kbench.log | tail -n 60
fi
tar -czf "$OUT/meta.tar.gz" -C /tmp meta
ls -la "$OUT"
echo "== total $(( $(date +%s) - T0 )) s"
