"""Build a config's model and call it on plain image tensors (analysis tools, benchmarks)."""
from typing import Tuple

import torch
from torch import nn

__all__ = ['build_model_from_config', 'TensorForward']


def build_model_from_config(config: str, cfg_options: dict = None) -> Tuple[nn.Module, object]:
    """The model of an mmpretrain/mmseg/mmdet config, built in the config's scope."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    return MODELS.build(cfg.model), cfg


class TensorForward(nn.Module):
    """``images (B, 3, H, W) -> tensors`` for any of the three codebases' models.

    Classifiers and segmentors run their ``mode='tensor'`` forward (the whole network).
    Detectors run ``extract_feat`` (backbone + neck): their heads' cost depends on the
    proposals, not on the input alone. ``covers`` says which.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.is_detector = hasattr(model, 'rpn_head') or hasattr(model, 'bbox_head')
        self.covers = 'backbone + neck' if self.is_detector else 'whole model'

    def forward(self, images: torch.Tensor):
        if self.is_detector:
            return self.model.extract_feat(images)
        return self.model(images, mode='tensor')
