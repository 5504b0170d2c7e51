"""Fitting a checkpoint to a backbone of another patch grid, token layout or head.

Published weights rarely match the backbone they are loaded into: another input size or
patch stride (the position-embedding grid), a class token where the backbone has none (a
classifier's weights in a dense-prediction backbone), registers, or a final norm the
backbone does not apply. :func:`fit_checkpoint` turns such a state dict into one that
loads strictly and returns a report of everything it dropped or resized;
:func:`load_pretrained` loads a checkpoint file that way and refuses missing or unexpected
keys. Weights of another depth or norm type are refused, never fitted.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from .pos_embed import resize_pos_embed, split_pos_embed
from .token_layout import TokenLayout

__all__ = ['FitTarget', 'checkpoint_norm_type', 'fit_checkpoint', 'load_pretrained']


@dataclass(frozen=True)
class FitTarget:
    """What a checkpoint is fitted to: the backbone's shapes and token layout.

    Attributes:
        embed_dims: Width ``C``.
        num_layers: Depth (a checkpoint of another depth is refused).
        norm_type: ``'LN'`` or ``'RMSNorm'`` (a checkpoint of the other one is refused).
        grid: Patch grid ``(Hg, Wg)`` of the backbone's ``pos_embed``.
        cls_token: The backbone's class-token layout: ``'head'``, ``'middle'`` or None.
        num_registers: Its register tokens.
        ckpt_cls_token: Where the class-token slot sits in checkpoints loaded into a
            backbone without a class token (``'head'`` or ``'middle'``); it is dropped.
        final_norm: Whether the backbone applies ``norm_f`` (else ``norm_f.*`` is dropped).
        interpolate_mode: Mode for resizing ``pos_embed``.
        arch: The backbone's arch settings (named when the depth differs).
        img_size, patch_size, patch_stride: What sets its grid (named when resizing).
    """
    embed_dims: int
    num_layers: int
    norm_type: str
    grid: Tuple[int, int]
    cls_token: Optional[str]
    num_registers: int
    ckpt_cls_token: str
    final_norm: bool
    interpolate_mode: str
    arch: dict
    img_size: Tuple[int, int]
    patch_size: int
    patch_stride: int

    @property
    def pos_layout(self) -> TokenLayout:
        """Layout of ``pos_embed``: the grid's patches and the class-token slot, if any."""
        return TokenLayout(self.grid[0] * self.grid[1], self.cls_token)

    @property
    def pos_embed_shape(self) -> Tuple[int, int, int]:
        return (1, self.pos_layout.num_tokens, self.embed_dims)


def checkpoint_norm_type(state_dict: Dict[str, Tensor], prefix: str = '') -> Optional[str]:
    """Norm type of a checkpoint's blocks ``{prefix}layers.N.norm``: ``'LN'`` when they
    have biases, ``'RMSNorm'`` when they have none, None when it has no blocks."""
    weights = [k for k in state_dict
               if k.startswith(prefix + 'layers.') and k.endswith('.norm.weight')]
    if not weights:
        return None
    has_bias = any(k[:-len('weight')] + 'bias' in state_dict for k in weights)
    return 'LN' if has_bias else 'RMSNorm'


def _check_architecture(state_dict: Dict[str, Tensor], target: FitTarget, prefix: str) -> None:
    """Refuse weights of the other norm type or of another depth."""
    ckpt_norm = checkpoint_norm_type(state_dict, prefix)
    if ckpt_norm is not None and (ckpt_norm == 'LN') != (target.norm_type == 'LN'):
        raise ValueError(
            f"The checkpoint's blocks use {ckpt_norm} but this backbone has "
            f"norm_type={target.norm_type!r}: the weights would load into the wrong "
            f"norm. Set norm_type='{ckpt_norm}' in the backbone config.")
    start = len(prefix + 'layers.')
    ids = {int(k[start:].split('.')[0]) for k in state_dict if k.startswith(prefix + 'layers.')}
    if ids and max(ids) + 1 != target.num_layers:
        raise ValueError(
            f'The checkpoint has {max(ids) + 1} blocks but this backbone has '
            f'{target.num_layers} (arch {target.arch}): it is a checkpoint of '
            f'another architecture. Set arch to the one the checkpoint was trained with.')


def fit_checkpoint(state_dict: Dict[str, Tensor], target: FitTarget,
                   prefix: str = '') -> Tuple[Dict[str, Tensor], dict]:
    """Fit a backbone state dict (keys under ``prefix``) to ``target``.

    Drops the class token, registers and ``norm_f`` the target does not have; resizes
    ``pos_embed`` ``(1, [1 +] Hs*Ws, C)`` to the target's grid and moves its class-token
    slot to the target's layout, or drops it (read at ``ckpt_cls_token``). Every resize is
    logged. The input is not modified.

    Returns:
        The fitted state dict and ``dict(dropped=[...], resized=[...])``, each entry a
        key with what happened to it.
    """
    from mmengine.logging import print_log
    _check_architecture(state_dict, target, prefix)
    fitted = dict(state_dict)
    report: dict = dict(dropped=[], resized=[])
    unused = [('cls_token', target.cls_token is None),
              ('register_tokens', not target.num_registers),
              ('pos_embed_reg', not target.num_registers)]
    for key, absent_here in unused:
        if absent_here and prefix + key in fitted:
            del fitted[prefix + key]
            report['dropped'].append(prefix + key)
    if not target.final_norm:  # a classifier's final norm, unused without one here
        for key in [k for k in fitted if k.startswith(prefix + 'norm_f.')]:
            del fitted[key]
            report['dropped'].append(f'{key} (final_norm=False)')
    name = prefix + 'pos_embed'
    if name not in fitted or tuple(fitted[name].shape) == target.pos_embed_shape:
        return fitted, report
    ckpt = fitted[name]
    num_src = ckpt.shape[1]
    side = int(math.isqrt(num_src))
    src_cls_token = None
    if side * side != num_src:  # one extra slot: a class token
        side = int(math.isqrt(num_src - 1))
        src_cls_token = target.cls_token or target.ckpt_cls_token
    if side * side != num_src - (src_cls_token is not None) or ckpt.shape[2] != target.embed_dims:
        raise ValueError(
            f'Cannot load {name} of shape {tuple(ckpt.shape)} into a model whose '
            f'pos_embed is {target.pos_embed_shape} (width {target.embed_dims}, '
            f'cls_token={target.cls_token!r}): neither a square patch grid nor one '
            f'plus a class-token slot of this width. Check arch/embed_dims, or convert '
            f'the checkpoint with tools/model_converters.')
    src_layout = TokenLayout(side * side, src_cls_token)
    cls_pos, patch_pos = split_pos_embed(ckpt, src_layout)
    if (side, side) != tuple(target.grid):
        patch_pos = resize_pos_embed(patch_pos, (side, side), target.grid,
                                     target.interpolate_mode)
        resize = (f'{name} {side}x{side} -> {target.grid[0]}x{target.grid[1]} '
                  f'({target.interpolate_mode})')
        report['resized'].append(resize)
        print_log(f'ShuffleMamba: resized {resize}: the checkpoint\'s patch grid differs '
                  f'from this model\'s (img_size {target.img_size}, patch {target.patch_size}, '
                  f'stride {target.patch_stride}).', logger='current')
    if target.cls_token is not None:
        if cls_pos is None:
            raise ValueError(f'{name} has no class-token slot but this model has '
                             f'cls_token={target.cls_token!r}.')
        patch_pos = target.pos_layout.arrange(patch_pos, cls_pos)
    elif cls_pos is not None:
        report['dropped'].append(f'{name}[{src_layout.cls_index}] (class-token slot, '
                                 f'ckpt_cls_token={src_cls_token!r})')
    fitted[name] = patch_pos
    return fitted, report


def load_pretrained(model: nn.Module, target: FitTarget, checkpoint: str,
                    prefix: Optional[str] = None, map_location: str = 'cpu',
                    dense_only: Sequence[str] = ()) -> dict:
    """Load ``checkpoint`` (its keys under ``prefix``) into ``model``, fitted to ``target``.

    Missing keys (other than those of the new dense-prediction modules, ``dense_only``
    key prefixes, which keep their initialisation) and unexpected keys are errors, not
    warnings: a backbone must never train from silently random weights.

    Returns:
        The report that is also logged: ``checkpoint``, ``loaded`` (tensor count),
        ``dropped``, ``resized``, ``missing``, ``unexpected`` and ``new`` (keys).
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import CheckpointLoader
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    state = ckpt.get('state_dict', ckpt)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f'No key of {checkpoint} starts with prefix {prefix!r}; '
                             f'set init_cfg.prefix to the backbone prefix of that '
                             f'checkpoint (e.g. "backbone.") or remove it.')
    state, fit_report = fit_checkpoint(state, target)
    result = model.load_state_dict(state, strict=False)
    dense_only = tuple(dense_only)
    new_modules = [k for k in result.missing_keys if k.startswith(dense_only)]
    missing = [k for k in result.missing_keys if not k.startswith(dense_only)]
    report = dict(checkpoint=checkpoint,
                  loaded=len(model.state_dict()) - len(result.missing_keys),
                  dropped=fit_report['dropped'], resized=fit_report['resized'],
                  missing=missing, unexpected=list(result.unexpected_keys), new=new_modules)
    print_log(
        f"ShuffleMamba init from {checkpoint}: {report['loaded']} tensors loaded; "
        f"missing keys: {missing or 'none'}; unexpected keys: "
        f"{report['unexpected'] or 'none'}; dropped on purpose: "
        f"{report['dropped'] or 'none'}; resized: {report['resized'] or 'none'}; "
        f"not in the checkpoint (new dense-prediction modules "
        f"{', '.join(dense_only)}): {len(new_modules)} tensors", logger='current')
    if missing or report['unexpected']:
        raise ValueError(f'Pretrained weights do not fit this backbone: missing '
                         f'{missing}, unexpected {report["unexpected"]}. Check arch, '
                         f'token layout (cls_token/num_registers) and init_cfg.prefix.')
    return report
