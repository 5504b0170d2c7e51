"""What differs between mmseg, mmdet and mmpretrain, in one table keyed by config scope.

A config's ``default_scope`` picks its :class:`Codebase`. ``tools/train.py``,
``tools/test.py``, ``tools/analysis_tools/show_predictions.py``, ``demo/image_demo.py``
and the backbone's input-size error read everything codebase-specific from
:data:`CODEBASES`; none of them branches on the scope itself.
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from .errors import InputError
from .inference import classify, detect, segment

__all__ = ['Codebase', 'CODEBASES', 'codebase_of', 'padding_hint']


@dataclass(frozen=True)
class Codebase:
    """One codebase's answers to what the tools need to know.

    Args:
        scope: the configs' ``default_scope``.
        task: what its models do, in words.
        inferencer: its inferencer class (``demo/image_demo.py``), as ``module.Name``.
        infer: runs that inferencer on one image file,
            ``(cfg, checkpoint, image, device, meta, options) -> (RGB picture, lines)``.
        init_model: its model loader (``show_predictions.py``), as ``module.name``.
        padding_hint: how to make input sides multiples of ``{p}`` in its configs.
        pad_divisor: where its data preprocessor keeps the padding divisor (keys).
        inference_mode: the model's ``test_cfg.mode`` says slide or whole inference.
        vis_switch: the visualization hook's on switch.
        show_dir: where ``--show-dir`` goes: the hook's ``out_dir`` or ``test_out_dir``,
            or the visualizer's ``save_dir``.
        tta_with_show: its visualization hook draws test-time-augmented batches.
        tta_model: the ``tta_model`` of ``--tta`` for a config without one (a flip TTA);
            None: the config must define ``tta_model`` and ``tta_pipeline``.
        tta_pack: the packing transform of that flip TTA; None: the test pipeline's own.
        tta_refuses_masks: its TTA model cannot merge instance masks (no ``--tta`` for
            a model with a mask head).
        out: what ``--out`` means for ``tools/test.py``.
        out_dir: ``--out`` is a directory for the evaluator's label maps (not a pickle).
        out_suffixes: the file endings ``--out`` must have, if any.
        dump_metric: the metric that writes ``--out``'s pickle, as ``module.Name``.
    """
    scope: str
    task: str
    inferencer: str
    infer: Callable
    init_model: Optional[str]
    padding_hint: str
    pad_divisor: Optional[Tuple[str, ...]]
    inference_mode: bool
    vis_switch: str
    show_dir: str
    tta_with_show: bool
    tta_model: Optional[dict]
    tta_pack: Optional[dict]
    tta_refuses_masks: bool
    out: str
    out_dir: bool
    out_suffixes: Optional[Tuple[str, ...]]
    dump_metric: Optional[str]

    @staticmethod
    def load(path: str):
        """The object a ``module.name`` entry names (imported now: the codebases are
        optional dependencies)."""
        module, name = path.rsplit('.', 1)
        return getattr(importlib.import_module(module), name)


CODEBASES = {c.scope: c for c in (
    Codebase(
        scope='mmseg', task='segmentation', inferencer='mmseg.apis.MMSegInferencer',
        infer=segment, init_model='mmseg.apis.init_model',
        padding_hint="Pad in the data preprocessor: data_preprocessor=dict(test_cfg=dict("
        "size_divisor={p})) for testing (model.data_preprocessor), and size=crop_size for "
        "training, as mmseg's SegDataPreProcessor does.",
        pad_divisor=('test_cfg', 'size_divisor'), inference_mode=True, vis_switch='draw',
        show_dir='visualizer.save_dir', tta_with_show=True, tta_model=None, tta_pack=None,
        tta_refuses_masks=False, out='directory for the predicted label maps', out_dir=True,
        out_suffixes=None, dump_metric=None),
    Codebase(
        scope='mmdet', task='detection', inferencer='mmdet.apis.DetInferencer',
        infer=detect, init_model='mmdet.apis.init_detector',
        padding_hint="Set the DetDataPreProcessor's pad_size_divisor to a multiple of {p} "
        "(the COCO configs use 32).",
        pad_divisor=('pad_size_divisor', ), inference_mode=False, vis_switch='draw',
        show_dir='hook.test_out_dir', tta_with_show=True,
        tta_model=dict(type='DetTTAModel',
                       tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
        tta_pack=dict(type='PackDetInputs', meta_keys=(
            'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
            'flip_direction')),
        tta_refuses_masks=True, out='.pkl file for the predictions', out_dir=False,
        out_suffixes=('.pkl', '.pickle'), dump_metric='mmdet.evaluation.DumpDetResults'),
    Codebase(
        scope='mmpretrain', task='classification',
        inferencer='mmpretrain.apis.ImageClassificationInferencer', infer=classify,
        init_model=None,
        padding_hint='Resize or crop to a multiple of {p} in the pipeline (ImageNet configs: '
        'ResizeEdge then CenterCrop to 224).',
        pad_divisor=None, inference_mode=False, vis_switch='enable', show_dir='hook.out_dir',
        tta_with_show=False, tta_model=dict(type='mmpretrain.AverageClsScoreTTA'),
        tta_pack=None, tta_refuses_masks=False,
        out='.pkl file for the predictions (or the metrics: --out-item metrics)',
        out_dir=False, out_suffixes=None, dump_metric='mmengine.evaluator.DumpResults'),
)}


def codebase_of(cfg, tool: str) -> Codebase:
    """The codebase of ``cfg`` (its ``default_scope``); :class:`InputError` naming
    ``tool`` for a scope outside :data:`CODEBASES`."""
    scope = cfg.get('default_scope')
    if scope not in CODEBASES:
        raise InputError(f'{cfg.filename}: default_scope {scope!r}; {tool} runs mmseg, '
                         f'mmdet and mmpretrain configs ({", ".join(CODEBASES)}).')
    return CODEBASES[scope]


def padding_hint(multiple: int, scope: Optional[str] = None) -> str:
    """How to make input sides multiples of ``multiple`` in the codebase ``scope``
    (default: mmengine's current default scope)."""
    if scope is None:
        from mmengine.registry import DefaultScope
        current = DefaultScope.get_current_instance()
        scope = current.scope_name if current is not None else None
    if scope in CODEBASES:
        return CODEBASES[scope].padding_hint.format(p=multiple)
    return f'Resize or pad the input to a multiple of {multiple}.'
