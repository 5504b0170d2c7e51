"""Causal depthwise conv1d behind one entry point: causal-conv1d's CUDA kernel, where it is
installed and passes its check on the tensor's device, else torch's conv1d.

The kernel is called with ``activation`` by keyword: causal-conv1d 1.0 takes
``causal_conv1d_fn(x, weight, bias, activation)``, 1.1 and later put ``seq_idx`` (and from
1.2 ``initial_states``, ...) before ``activation``. Before the kernel is used on a device,
:func:`verify` runs it once (per process and device) on a tiny problem laid out as the
mixer's (channels-last), forward and backward, against the torch path. An installed
causal-conv1d that fails to import or fails the check gives one warning naming the
installed versions, what failed and the fix, and torch's conv1d runs;
``MMSHUFFLEMAMBA_SCAN_BACKEND=mamba_ssm`` (the upstream kernels or an error) makes it an
error instead.
"""
import functools
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_contract import BrokenInstall
from .selective_scan import BACKEND_ENV, env_backend
from .upstream_kernels import (check_kernel, import_kernel, installed_version, reinstall_command,
                               versions)

__all__ = ['causal_conv1d', 'load_causal_conv1d', 'usable_kernel', 'verify']

_warn_once = functools.lru_cache(maxsize=None)(warnings.warn)  # warnings.warn, once a message


@functools.lru_cache(maxsize=None)
def _imported() -> Tuple[Optional[Callable], str]:
    """``(causal_conv1d_fn, '')``, or ``(None, what the import raised)``."""
    return import_kernel('causal_conv1d', 'causal_conv1d_fn')


def load_causal_conv1d() -> Optional[Callable]:
    """The ``causal_conv1d`` package's ``causal_conv1d_fn``, or None where it does not
    import."""
    return _imported()[0]


def _broken(what: str) -> BrokenInstall:
    return BrokenInstall(
        f"causal-conv1d's kernel is installed but unusable: {what}. Installed: {versions()}. "
        f'To fix it, rebuild it against this torch: {reinstall_command()}; or uninstall it '
        "(pip uninstall causal-conv1d): torch's conv1d does the same")


def _torch_causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                         activation: Optional[str] = None) -> Tensor:
    length, width = x.shape[-1], weight.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1,
                   groups=x.shape[1])[..., :length]
    return out if activation is None else F.silu(out)


@functools.lru_cache(maxsize=None)
def verify(device: torch.device) -> Optional[BrokenInstall]:
    """Run ``causal_conv1d_fn`` once on a tiny seeded problem on ``device`` (``x``
    ``(2, 8, 37)`` channels-last, as the mixer passes it; width 4; SiLU), forward and
    backward, against torch's conv1d; cached per device. None when it agrees, else why it
    cannot be used."""
    kernel = load_causal_conv1d()
    gen = torch.Generator().manual_seed(0)
    inputs = dict(x=torch.randn(2, 8, 37, generator=gen),
                  weight=torch.randn(8, 4, generator=gen), bias=torch.randn(8, generator=gen))

    def channels_last(fn: Callable) -> Callable:
        return lambda x, weight, bias: fn(x.transpose(1, 2).contiguous().transpose(1, 2),
                                          weight, bias, activation='silu')

    failure = check_kernel(channels_last(kernel), channels_last(_torch_causal_conv1d),
                           {name: t.to(device) for name, t in inputs.items()})
    return None if failure is None else _broken(f'on {device}, {failure}')


def usable_kernel(device: torch.device) -> Optional[Callable]:
    """The kernel for tensors on ``device`` where it is installed and passes :func:`verify`;
    else None, with one warning (or a RuntimeError when the upstream kernels are forced)
    where it is installed but unusable."""
    kernel = load_causal_conv1d()
    if kernel is None and installed_version('causal-conv1d') is None:
        return None
    failure = (verify(device) if kernel is not None else
               _broken(f'causal_conv1d does not import ({_imported()[1]})'))
    if failure is None:
        return kernel
    if env_backend() == 'mamba_ssm':
        raise RuntimeError(f'{BACKEND_ENV}=mamba_ssm asks for the upstream CUDA kernels, and '
                           f'{failure}. Or unset {BACKEND_ENV} (auto).')
    _warn_once(f"mmshufflemamba: {failure}. torch's conv1d runs instead "
               f'({BACKEND_ENV}=mamba_ssm makes this an error).', RuntimeWarning)
    return None


def causal_conv1d(x: Tensor,
                  weight: Tensor,
                  bias: Optional[Tensor] = None,
                  activation: Optional[str] = None) -> Tensor:
    """Depthwise conv over L where output ``t`` sees inputs ``<= t`` only.

    Args:
        x: ``(B, D, L)``.
        weight: ``(D, K)`` (a Conv1d weight ``(D, 1, K)`` is accepted too).
        bias: ``(D,)``.
        activation: None, ``'silu'`` or ``'swish'``.

    Returns:
        ``(B, D, L)``.
    """
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    if activation not in (None, 'silu', 'swish'):
        raise ValueError(f"activation must be None, 'silu' or 'swish'; got {activation!r}.")
    if x.is_cuda:
        kernel = usable_kernel(x.device)
        if kernel is not None:
            return kernel(x, weight, bias, activation=activation)
    return _torch_causal_conv1d(x, weight, bias, activation)
