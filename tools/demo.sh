#!/usr/bin/env bash
# The main job on built-in data: generate the toy ADE20K-layout dataset, train
# ShuffleMamba-UperNet on it on CPU (a few minutes), evaluate it and print the mIoU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONFIG=configs/upernet/upernet_shufflemamba-toy_1xb8-300_toyade-64x64.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_upernet}
"$PY" tools/dataset_converters/make_toy_data.py ade data/toy_ade
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
"$PY" tools/test.py "$CONFIG" "$(cat "$WORK_DIR/last_checkpoint")" --work-dir "$WORK_DIR"
