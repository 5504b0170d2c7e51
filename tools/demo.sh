#!/usr/bin/env bash
# The main job on built-in data: generate the toy ImageNet-layout dataset, train a small
# ShuffleMamba classifier with mmpretrain on CPU, then evaluate the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONFIG=configs/shufflemamba/shufflemamba-toy_1xb32_toycls.py
WORK_DIR=${WORK_DIR:-work_dirs/demo_cls}
"$PY" tools/dataset_converters/make_toy_data.py cls data/toy_cls
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
"$PY" tools/test.py "$CONFIG" "$WORK_DIR/$(cat "$WORK_DIR/last_checkpoint" | xargs basename)" \
  --work-dir "$WORK_DIR"
