"""Layer-wise learning-rate decay for any model whose backbone has ``get_layer_depth``.

Registered in mmshufflemamba's optimizer-wrapper-constructor registry (a child of
mmengine's root), so mmpretrain, mmseg and mmdet configs all use it as::

    optim_wrapper = dict(
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        constructor='mmshufflemamba.LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.9))

A parameter at depth ``d`` of ``n`` (``backbone.get_layer_depth``; parameters outside the
backbone are depth ``n - 1``) gets ``lr * layer_decay_rate ** (n - 1 - d)``. No weight
decay for: 1-D parameters (norms, biases, ``D``/``D_b``), parameters flagged
``_no_weight_decay`` (``A_log``/``A_b_log``), and the backbone's ``no_weight_decay()``
names (position embeddings, class/register tokens). ``paramwise_cfg=dict(no_decay='ndim')``
exempts only the 1-D parameters, as upstream ShuffleMamba's detection constructor
(``MyLayerDecayOptimizerConstructor``) does in effect: it ignores ``custom_keys``, and its
name exemptions never match the model's ``backbone.``-prefixed names.
"""
from typing import Dict, List, Tuple

from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from mmshufflemamba.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['LayerDecayOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """See the module docstring. ``paramwise_cfg`` keys: ``layer_decay_rate`` (required),
    ``backbone`` (attribute name of the backbone, default ``'backbone'``), ``no_decay``
    (``'package'``, the default, or ``'ndim'``: see the module docstring)."""

    NO_DECAY_RULES = ('package', 'ndim')

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - {'layer_decay_rate', 'backbone', 'no_decay'}
        if 'layer_decay_rate' not in paramwise_cfg:
            raise ValueError('LayerDecayOptimWrapperConstructor needs '
                             'paramwise_cfg=dict(layer_decay_rate=...).')
        if unknown:
            raise ValueError(f'LayerDecayOptimWrapperConstructor does not understand '
                             f'paramwise_cfg keys {sorted(unknown)}; it takes '
                             f'layer_decay_rate, backbone and no_decay.')
        self.no_decay_rule = paramwise_cfg.get('no_decay', 'package')
        if self.no_decay_rule not in self.NO_DECAY_RULES:
            raise ValueError(f'paramwise_cfg.no_decay must be one of {self.NO_DECAY_RULES}; '
                             f'got {self.no_decay_rule!r}.')
        self.layer_decay_rate = float(paramwise_cfg['layer_decay_rate'])
        self.backbone_name = paramwise_cfg.get('backbone', 'backbone')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def _backbone(self, model: nn.Module) -> nn.Module:
        backbone = getattr(model, self.backbone_name, None)
        if backbone is None or not hasattr(backbone, 'get_layer_depth'):
            raise TypeError(f'LayerDecayOptimWrapperConstructor needs model.'
                            f'{self.backbone_name} with a get_layer_depth() method; '
                            f'{type(model).__name__} has none.')
        return backbone

    def param_groups(self, model: nn.Module) -> List[dict]:
        """One group per (depth, decay or not), with its ``lr`` and ``weight_decay``."""
        if hasattr(model, 'module'):
            model = model.module
        backbone = self._backbone(model)
        prefix = self.backbone_name + '.'
        no_decay_names = {prefix + n for n in getattr(backbone, 'no_weight_decay', set)()}
        groups: Dict[Tuple[int, bool], dict] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            depth, num_layers = backbone.get_layer_depth(name, prefix)
            no_decay = param.ndim <= 1 or self.no_decay_rule == 'package' and (
                getattr(param, '_no_weight_decay', False) or name in no_decay_names)
            key = (depth, no_decay)
            if key not in groups:
                scale = self.layer_decay_rate**(num_layers - 1 - depth)
                groups[key] = dict(
                    params=[], param_names=[], lr=self.base_lr * scale, lr_scale=scale,
                    weight_decay=0.0 if no_decay else self.base_wd,
                    layer_depth=depth)
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        return [groups[key] for key in sorted(groups)]

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        groups = self.param_groups(module)
        if get_dist_info()[0] == 0:
            logger = MMLogger.get_current_instance()
            for g in groups:
                logger.debug(f'layer decay group depth={g["layer_depth"]} '
                             f'lr={g["lr"]:.3g} wd={g["weight_decay"]} '
                             f'params={g["param_names"]}')
        for g in groups:
            g.pop('param_names')
            params.append(g)
