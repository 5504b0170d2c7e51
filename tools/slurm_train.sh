#!/usr/bin/env bash
# Training on a Slurm cluster (one task per GPU).
#   GPUS=16 GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [args...]
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: [GPUS=N GPUS_PER_NODE=N CPUS_PER_TASK=N SRUN_ARGS=...] $0 PARTITION JOB_NAME CONFIG [WORK_DIR] [args...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
WORK_DIR_ARGS=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  WORK_DIR_ARGS=(--work-dir "$1")
  shift
fi
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PY=${PYTHON:-python3}
DIR="$(cd "$(dirname "$0")" && pwd)"
# shellcheck disable=SC2086
srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 $SRUN_ARGS \
  "$PY" -u "$DIR/train.py" "$CONFIG" "${WORK_DIR_ARGS[@]}" --launcher slurm "$@"
