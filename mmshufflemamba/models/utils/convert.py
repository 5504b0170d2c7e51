"""Key mapping between reference checkpoints and this package's mmpretrain checkpoints.

Reference layouts (the ``model`` or ``model_ema`` entry of their ``.pth`` files):

* Vim (``vim_*``, class token in the middle), VideoMamba image models and plain
  ShuffleMamba (class token at the head): ``patch_embed.proj.*``, ``pos_embed``,
  ``cls_token`` ``(1, 1, C)``, ``layers.N.*``, ``norm_f.*``, ``head.*``.
* Mamba-Reg / ShuffleMamba-Reg (``mambar_*``): ``cls_token`` ``(1, k, C)`` holds the
  ``k`` registers and ``pos_embed_cls`` their position embedding; ``pos_embed`` has no
  class slot; ``neck.weight`` and ``norm_neck.*`` are the head's reduction and norm.

Ours (``ImageClassifier``): ``backbone.`` + the backbone keys (registers as
``register_tokens``/``pos_embed_reg``) and ``head.fc.*`` (``head.reduction.weight``,
``head.norm.*`` for the register head). Unknown keys are errors, never dropped.
"""
from collections import OrderedDict
from typing import Dict

from torch import Tensor

__all__ = ['reference_to_mmpretrain', 'mmpretrain_to_reference', 'is_register_model']

_BACKBONE_PREFIXES = ('patch_embed.', 'layers.', 'norm_f.')
_BACKBONE_KEYS = ('pos_embed', )


def is_register_model(reference: Dict[str, Tensor]) -> bool:
    """Mamba-Reg layout: several "class" tokens (the registers) with their own positions."""
    return 'pos_embed_cls' in reference or (
        'cls_token' in reference and reference['cls_token'].shape[1] > 1)


def reference_to_mmpretrain(reference: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """Reference state dict -> mmpretrain ``ImageClassifier`` state dict."""
    registers = is_register_model(reference)
    out = OrderedDict()
    unknown = []
    for key, value in reference.items():
        if key.startswith(_BACKBONE_PREFIXES) or key in _BACKBONE_KEYS:
            out['backbone.' + key] = value
        elif key == 'cls_token':
            out['backbone.register_tokens' if registers else 'backbone.cls_token'] = value
        elif key == 'pos_embed_cls':
            out['backbone.pos_embed_reg'] = value
        elif key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value
        elif key == 'neck.weight':
            out['head.reduction.weight'] = value
        elif key.startswith('norm_neck.'):
            out['head.norm.' + key[len('norm_neck.'):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f'Keys of no known reference layout: {unknown}. Nothing was '
                       f'converted; extend mmshufflemamba.models.utils.convert if this '
                       f'is a new layout.')
    return out


def mmpretrain_to_reference(state: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """mmpretrain ``ImageClassifier`` state dict -> reference state dict (the inverse)."""
    out = OrderedDict()
    unknown = []
    renames = {'backbone.register_tokens': 'cls_token', 'backbone.pos_embed_reg':
               'pos_embed_cls', 'head.reduction.weight': 'neck.weight'}
    for key, value in state.items():
        if key in renames:
            out[renames[key]] = value
        elif key.startswith('backbone.'):
            out[key[len('backbone.'):]] = value
        elif key.startswith('head.fc.'):
            out['head.' + key[len('head.fc.'):]] = value
        elif key.startswith('head.norm.'):
            out['norm_neck.' + key[len('head.norm.'):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f'Keys with no reference counterpart: {unknown}.')
    return out
