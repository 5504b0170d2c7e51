#!/usr/bin/env bash
# Distributed training with torchrun, on one node or several.
#   GPUS=8 bash tools/dist_train.sh CONFIG [train.py args...]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 bash tools/dist_train.sh CONFIG  # node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 GPUS=8 bash tools/dist_train.sh CONFIG  # node 1
# GPUS is the number of processes on this node (CPU training uses the gloo backend:
# add --cfg-options env_cfg.dist_cfg.backend=gloo).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [GPUS=N NNODES=N NODE_RANK=R MASTER_ADDR=A PORT=P] $0 CONFIG [args...]" >&2
  exit 2
fi
CONFIG=$1
shift
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
  "$DIR/train.py" "$CONFIG" --launcher pytorch "$@"
