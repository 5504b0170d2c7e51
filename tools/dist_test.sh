#!/usr/bin/env bash
# Distributed testing with torchrun (variables as in dist_train.sh).
#   GPUS=8 bash tools/dist_test.sh CONFIG CHECKPOINT [test.py args...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [GPUS=N NNODES=N NODE_RANK=R MASTER_ADDR=A PORT=P] $0 CONFIG CHECKPOINT [args...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
shift 2
GPUS=${GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PY=${PYTHON:-python3}
DIR="$(cd "$(dirname "$0")" && pwd)"
exec "$PY" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS" \
  --master_addr="$MASTER_ADDR" --master_port="$PORT" \
  "$DIR/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
