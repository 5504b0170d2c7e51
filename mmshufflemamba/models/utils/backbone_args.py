"""Resolving and checking a plain backbone's constructor arguments and its inputs, with
errors that say what to set instead."""
from typing import Dict, List, Optional, Sequence, Union

from torch import Tensor

from mmshufflemamba.apis.codebases import padding_hint
from .token_layout import CLS_TOKEN_LAYOUTS

__all__ = ['resolve_arch', 'resolve_out_indices', 'check_choice', 'check_token_args',
           'check_pyramid_args', 'check_patch_side', 'check_images']


def resolve_arch(arch: Union[str, dict], zoo: Dict[str, dict], defaults: dict,
                 **explicit: Optional[object]) -> dict:
    """An arch's settings: ``zoo[arch]`` (or the dict ``arch``) over ``defaults``, with the
    ``explicit`` arguments that are not None (``norm_type``/``patch_stride``) set.

    An argument that contradicts the arch (``arch='middle', norm_type='RMSNorm'``) is
    an error, not a silent override: use a dict arch for a variant.
    """
    if isinstance(arch, str):
        key = arch.lower()
        if key not in zoo:
            raise ValueError(f'Unknown arch {arch!r}; choose from '
                             f'{sorted(set(zoo))} or pass a dict.')
        given = dict(zoo[key])
    else:
        given = dict(arch)
        missing = {'embed_dims', 'num_layers'} - set(given)
        if missing:
            raise ValueError(f'A custom arch dict needs the keys {sorted(missing)}.')
        unknown = set(given) - {'embed_dims', 'num_layers', *defaults}
        if unknown:
            raise ValueError(f'Unknown arch keys {sorted(unknown)}; an arch dict takes '
                             f'embed_dims, num_layers, norm_type and patch_stride.')
    settings = {**defaults, **given}
    for name, value in explicit.items():
        if value is None:
            continue
        if name in given and given[name] != value:
            raise ValueError(f'{name}={value!r} contradicts arch {arch!r}, whose '
                             f'{name} is {given[name]!r}. Leave {name} unset, or pass '
                             f'a dict arch for another variant.')
        settings[name] = value
    return settings


def resolve_out_indices(out_indices: Union[int, Sequence[int]], num_layers: int) -> List[int]:
    """Block indices (negative ones count from the end) -> sorted, unique, non-negative."""
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    if not indices:
        raise ValueError('out_indices must name at least one block.')
    parsed = []
    for index in indices:
        if not -num_layers <= index < num_layers:
            raise ValueError(f'out_indices {index} is outside the depth: this backbone '
                             f'has {num_layers} blocks (valid: '
                             f'{-num_layers}..{num_layers - 1}).')
        parsed.append(index % num_layers)
    return sorted(set(parsed))


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {tuple(choices)}; got {value!r}.')


def check_token_args(cls_token: Optional[str], num_registers: int, out_type: str) -> None:
    """The class token, the registers and the output type must agree."""
    check_choice('cls_token', cls_token, CLS_TOKEN_LAYOUTS)
    if out_type == 'registers' and not num_registers:
        raise ValueError("out_type='registers' needs num_registers > 0.")
    if out_type == 'cls_token' and cls_token is None:
        raise ValueError("out_type='cls_token' needs a class token: set cls_token to "
                         "'head' or 'middle', or use out_type='avg_featmap'.")
    if num_registers < 0:
        raise ValueError(f'num_registers must be >= 0; got {num_registers}.')
    if num_registers and cls_token is not None:
        raise ValueError(f'num_registers={num_registers} needs cls_token=None: Mamba-Reg '
                         f'models classify from their registers and have no class token '
                         f'(got cls_token={cls_token!r}).')


def check_pyramid_args(out_scales: Optional[Sequence[float]], out_type: str,
                       out_indices: List[int]) -> None:
    """A pyramid (``out_scales``) needs feature maps: one per scale or a single one."""
    if out_scales is None:
        return
    if out_type != 'featmap':
        raise ValueError(f"out_scales needs out_type='featmap'; got {out_type!r}.")
    if len(out_indices) not in (1, len(out_scales)):
        raise ValueError(f'out_scales {tuple(out_scales)} needs one out_indices entry '
                         f'per scale or a single one; got {out_indices}.')


def check_patch_side(side: int, patch_size: int, patch_stride: int, what: str) -> None:
    """Refuse an image side the patches do not cover exactly (``patch + stride * k``)."""
    p, s = patch_size, patch_stride
    if side >= p and (side - p) % s == 0:
        return
    if s == p:
        raise ValueError(f'{what} side {side} is not a multiple of the patch size {p}. '
                         f'{padding_hint(p)}')
    below = p + max(side - p, 0) // s * s
    raise ValueError(
        f'{what} side {side} does not fit patch size {p} with stride {s}: sides must be '
        f'{p} + {s} * k (e.g. {below} or {below + s}) so that the patches cover the '
        f'image exactly. Resize or pad the input.')


def check_images(x: Tensor, in_channels: int, patch_size: int, patch_stride: int) -> None:
    """Refuse anything but images ``(B, in_channels, H, W)`` whose sides fit the patches."""
    if x.dim() != 4:
        raise ValueError(f'Expected images of shape (B, C, H, W); got {tuple(x.shape)}.')
    if x.shape[1] != in_channels:
        raise ValueError(f'Expected {in_channels} input channels, got {x.shape[1]} '
                         f'(input shape {tuple(x.shape)}); set in_channels or convert '
                         f'the images.')
    for side in x.shape[2:]:
        check_patch_side(side, patch_size, patch_stride, 'Input')
