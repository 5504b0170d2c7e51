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
import math
from collections import OrderedDict
from typing import Dict, List

from torch import Tensor

from .checkpoint_fit import checkpoint_norm_type

__all__ = [
    'reference_to_mmpretrain', 'mmpretrain_to_reference', 'is_register_model',
    'describe_reference'
]

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


def _strides_for_grid(grid: int, patch: int, sizes=(224, 384, 128)) -> List[str]:
    """Patch strides that give a ``grid``-wide patch grid at common training sizes."""
    found = []
    for size in sizes:
        if grid > 1 and (size - patch) % (grid - 1) == 0 and \
                0 < (size - patch) // (grid - 1) <= patch:
            found.append(f'stride {(size - patch) // (grid - 1)} at {size} px')
    if not any(f'stride {patch} ' in f for f in found):
        found.append(f'stride {patch} at {patch * grid} px')
    return found


def describe_reference(reference: Dict[str, Tensor]) -> List[str]:
    """What a reference state dict says about its architecture, one fact per line.

    The width, depth, norm type, patch kernel, register count and head reduction are in
    the tensors' shapes; the patch *stride* and the class token's position are not: the
    lines say what the position-embedding grid implies and what to set.
    """
    lines = []
    width = reference['patch_embed.proj.weight'].shape[0]
    patch = reference['patch_embed.proj.weight'].shape[-1]
    depth = 1 + max(int(k.split('.')[1]) for k in reference if k.startswith('layers.'))
    norm = checkpoint_norm_type(reference)
    d_state = reference['layers.0.mixer.A_log'].shape[1]
    lines.append(f'architecture: embed_dims {width}, {depth} blocks, {norm}, d_state '
                 f'{d_state}, patch {patch}')
    slots = reference['pos_embed'].shape[1]
    registers = is_register_model(reference)
    patches = slots if registers else slots - 1
    grid = math.isqrt(patches)
    extra = '' if registers else ' (+1 class-token slot)'
    if grid * grid != patches:
        lines.append(f'pos_embed: {slots} slots{extra}, not a square grid')
    else:
        lines.append(f'pos_embed: {grid}x{grid} patch grid{extra}; with patch {patch} that '
                     f'is ' + ', or '.join(_strides_for_grid(grid, patch)) +
                     '. Set img_size and patch_stride (default: the patch size) to match, '
                     'or the grid is resized when the weights load.')
    if registers:
        k = reference['cls_token'].shape[1]
        reduction = width // reference['neck.weight'].shape[0] if 'neck.weight' in \
            reference else 1
        lines.append(f'registers: {k} (Mamba-Reg layout): cls_token=None, num_registers={k}, '
                     f"out_type='registers'; head RegisterClsHead(num_registers={k}, "
                     f'reduction={reduction})')
    else:
        lines.append("class token: cls_token='middle' for Vim (vim_*midclstok*), 'head' for "
                     'ShuffleMamba and VideoMamba; the weights cannot tell which')
    return lines
