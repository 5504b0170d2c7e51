#!/usr/bin/env bash
# The main job on built-in data, with pictures of what the model learned.
#
#   bash tools/demo.sh              # ShuffleMamba-UperNet on the toy ADE20K-layout data
#   bash tools/demo.sh mask-rcnn    # ShuffleMamba Mask R-CNN on the toy COCO-layout data
#
# Generates the toy dataset, trains on CPU, evaluates the checkpoint (tools/test.py), then
# draws a few validation images as image | ground truth | prediction (with the codebase's
# visualizer) and the training curve (loss and validation metric over the iterations,
# from the run's own vis_data/scalars.json). The last lines print the metric and the
# paths of the pictures. WORK_DIR overrides where everything goes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TASK=${1:-upernet}
case "$TASK" in
  upernet)
    CONFIG=configs/upernet/upernet_shufflemamba-toy_1xb8-300_toyade-64x64.py
    WORK_DIR=${WORK_DIR:-work_dirs/demo_upernet}
    DATA=(ade data/toy_ade)
    WHAT="ShuffleMamba-UperNet, toy ADE20K-layout data (5 classes), 300 iterations"
    METRICS=(mIoU mAcc aAcc) ;;
  mask-rcnn)
    CONFIG=configs/mask_rcnn/mask-rcnn_shufflemamba-toy_fpn_1x_toycoco.py
    WORK_DIR=${WORK_DIR:-work_dirs/demo_mask_rcnn}
    DATA=(coco data/toy_coco)
    WHAT="ShuffleMamba Mask R-CNN, toy COCO-layout data (3 classes), 150 iterations"
    METRICS=(coco/bbox_mAP coco/segm_mAP coco/bbox_mAP_50 coco/segm_mAP_50) ;;
  *) echo "demo.sh: unknown demo '$TASK' (known: upernet, mask-rcnn)" >&2; exit 2 ;;
esac
VIS_DIR="$WORK_DIR/vis"

"$PY" tools/dataset_converters/make_toy_data.py "${DATA[@]}"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
"$PY" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" | tee "$WORK_DIR/test_output.txt"
"$PY" tools/analysis_tools/show_predictions.py "$CONFIG" "$CHECKPOINT" \
  --out "$VIS_DIR/predictions.png"
"$PY" tools/analysis_tools/plot_curves.py "$WORK_DIR" --out "$VIS_DIR/training_curve.png"

echo "== demo done: $WHAT"
echo "   checkpoint: $CHECKPOINT"
"$PY" - "$WORK_DIR/test_output.txt" "${METRICS[@]}" <<'PYEOF'
import ast
import sys
line = [ln for ln in open(sys.argv[1]) if ln.startswith('metrics:')][-1]
metrics = ast.literal_eval(line[len('metrics:'):].strip())
print('   test set:', '  '.join(f'{key} {metrics[key]:.2f}' if metrics[key] > 1 else
                                f'{key} {metrics[key]:.3f}' for key in sys.argv[2:]))
PYEOF
echo "   validation images (image | ground truth | prediction): $VIS_DIR/predictions.png"
echo "   training curve (loss and validation metric over iterations): $VIS_DIR/training_curve.png"
