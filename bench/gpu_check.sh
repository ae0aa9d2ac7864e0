#!/usr/bin/env bash
# The MNIST sample on CUDA, single process and data-parallel: one process, then DistributedDataParallel (nccl) with one rank
# per GPU, on the same generated data for the same epochs; prints each run's samples/s and accuracy.
# Run it on a machine with an NVIDIA GPU and torch with CUDA:  bash bench/gpu_check.sh [TRAIN] [EPOCHS]
# Not yet run on a GPU (see README.md, "Data-parallel training").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TRAIN=${1:-20000}
EPOCHS=${2:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA: torch " + torch.__version__)'
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
"$PY" samples/mnist/make_dataset.py "$WORK/data" --train "$TRAIN" --test 2000

report() {  # label, metrics.json
  "$PY" - "$1" "$2" <<'PY'
import json, statistics, sys
m = json.load(open(sys.argv[2]))
rates = [h["samples_per_sec"] for h in m["history"]]
print(f"{sys.argv[1]}: {statistics.median(rates):.0f} samples/s (median of {len(rates)} epochs), "
      f"test accuracy {m['test_accuracy']:.2%}, world size {m.get('world_size', 1)}, {m['device_name']}")
PY
}

ARGS=(--epochs "$EPOCHS" --seed 1 --device cuda)
"$PY" samples/mnist/ConvNet_MNIST.py "$WORK/data" "$WORK/single" "${ARGS[@]}" > "$WORK/single.log"
report "CUDA, 1 process" "$WORK/single/metrics.json"

if [ "$GPUS" -lt 2 ]; then
  echo "one GPU: DDP with nccl needs a GPU per rank (NCCL refuses two ranks on one device); DDP skipped"
  exit 0
fi
RANKS=$GPUS
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
for ((rank = 0; rank < RANKS; rank++)); do
  RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=$RANKS MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
    "$PY" samples/mnist/ConvNet_MNIST.py "$WORK/data" "$WORK/ddp" "${ARGS[@]}" > "$WORK/rank$rank.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" -ne 0 ]; then
  echo "DDP failed:"; tail -n 20 "$WORK"/rank*.log; exit 1
fi
grep -h "^rank " "$WORK"/rank*.log
report "CUDA, DDP $RANKS ranks" "$WORK/ddp/metrics.json"
