"""Selective scan (the S6 recurrence of Mamba) behind one entry point, over a table of backends.

``selective_scan`` has the signature of ``mamba_ssm``'s ``selective_scan_fn`` and computes
the recurrence :mod:`.scan_contract` defines.

:data:`BACKENDS` names every backend; each lives in its own module and says, by its
``why_not(call)``, whether it can run a call. :func:`choose_backend` picks one per call:

* a requested one (a mixer's ``scan_backend``, else :data:`BACKEND_ENV`), which must be able
  to run the call: one that cannot is an error that says why, not a silent fallback;
* otherwise the first of :data:`AUTO_ORDER` that can: for CUDA tensors ``mamba_ssm``'s
  kernel once it has passed its check on the device (:func:`~.mamba_ssm_scan.verify`), the
  Triton kernel, the PyTorch scan (warning how to get a fast path); for CPU tensors the
  compiled C++ kernel, the PyTorch scan. An installed backend that is unusable (a
  :class:`~.scan_contract.BrokenInstall`) gives one warning and is passed over.

``'exportable'`` (ONNX export) and ``'stand_in'`` (FLOP tracing) are only ever requested.
TorchScript tracing is refused: it can represent no real backend.
"""
import functools
import os
import warnings
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from . import (compiled_scan, mamba_ssm_scan, reference_scan, stand_in_scan, torch_scan,
               triton_scan)
from .scan_contract import BrokenInstall, ScanCall, ScanFn, ScanOutput

__all__ = ['selective_scan', 'choose_backend', 'scan_backend', 'BACKENDS', 'BACKEND_ENV']

BACKEND_ENV = 'MMSHUFFLEMAMBA_SCAN_BACKEND'


class Backend(NamedTuple):
    """One way to run the scan: what it is, why it cannot run a call, and the run itself."""
    description: str
    why_not: Callable[[ScanCall], Optional[str]]
    run: ScanFn


BACKENDS = {
    'mamba_ssm': Backend("mamba_ssm's CUDA kernel", mamba_ssm_scan.why_not,
                         mamba_ssm_scan.selective_scan_mamba_ssm),
    'triton': Backend('the Triton kernel', triton_scan.why_not,
                      triton_scan.selective_scan_triton),
    'compiled': Backend('the compiled CPU kernel', compiled_scan.why_not,
                        compiled_scan.selective_scan_cpu),
    'torch': Backend('the PyTorch scan', torch_scan.why_not, torch_scan.selective_scan_torch),
    'exportable': Backend('the exportable scan', reference_scan.why_not,
                          reference_scan.selective_scan_exportable),
    'stand_in': Backend('the stand-in scan (shapes, not values)', stand_in_scan.why_not,
                        stand_in_scan.selective_scan_stand_in),
}
AUTO_ORDER = {'cuda': ('mamba_ssm', 'triton', 'torch'), 'cpu': ('compiled', 'torch')}
TRACEABLE = ('stand_in', )  # the only backend TorchScript may trace (it computes no scan)
ENV_CHOICES = tuple(name for name in BACKENDS if name not in TRACEABLE)
_warn_once = functools.lru_cache(maxsize=None)(warnings.warn)  # warnings.warn, once a message

_TRACING_REFUSED = (
    'TorchScript tracing (torch.jit.trace; torch.onnx.export with dynamo=False, which mmdeploy '
    'uses) cannot represent the selective scan: it records a kernel as an opaque call, or '
    'unrolls the PyTorch scan for one sequence length, and the export silently computes '
    "something else. Export to ONNX with tools/deployment/export_onnx.py (dynamo=True, scan "
    "backend 'exportable': mmshufflemamba.models.layers.use_scan_backend), or use "
    'torch.export.export.')
_SLOW_CUDA_WARNING = (
    'mmshufflemamba: no fast selective scan for CUDA tensors here (no usable mamba_ssm '
    'and no Triton >= 3.4), so the PyTorch scan runs: one step at a time, far '
    'too slow for training. Install Triton (it comes with the CUDA builds of torch: pip '
    'install triton) or mamba-ssm (pip install mamba-ssm, built against your torch).')


def env_backend() -> Optional[str]:
    """The backend :data:`BACKEND_ENV` names, or None for ``auto`` (or unset)."""
    value = os.environ.get(BACKEND_ENV, 'auto').strip().lower()
    if value in ('', 'auto'):
        return None
    if value not in ENV_CHOICES:
        raise ValueError(f'{BACKEND_ENV}={value!r} is not a selective-scan backend; use auto '
                         f'(or unset it) or one of {", ".join(ENV_CHOICES)}.')
    return value


def scan_backend(u: Tensor, return_last_state: bool = False,
                 requested: Optional[str] = None) -> str:
    """The backend a call on ``u`` gets (a key of :data:`BACKENDS`); logs nothing.

    ``requested`` (a key of :data:`BACKENDS`) wins over :data:`BACKEND_ENV`. Raises
    ValueError for an unknown name and RuntimeError when the requested backend cannot run
    the call, both saying how to fix it.
    """
    return _choose(ScanCall(u.device.type, u.dtype, return_last_state, u.device.index),
                   requested)


def _choose(call: ScanCall, requested: Optional[str]) -> str:
    if requested is None:
        requested = env_backend()
        source, fix = f'{BACKEND_ENV}={requested}', f'unset {BACKEND_ENV} (auto)'
    else:
        source, fix = f'the requested scan backend {requested!r}', 'request None (auto)'
        if requested not in BACKENDS:
            raise ValueError(f'{requested!r} is not a selective-scan backend; {fix} or one '
                             f'of {", ".join(BACKENDS)}.')
    if requested is None:
        return _automatic(call)
    reason = BACKENDS[requested].why_not(call)
    if reason:
        raise RuntimeError(f'{source} cannot run this call: {reason}. Fix: '
                           f'{fix}, or choose another backend.')
    return requested


def _automatic(call: ScanCall) -> str:
    """The first of :data:`AUTO_ORDER` that can run ``call``; an unusable install warns once."""
    for name in AUTO_ORDER.get(call.device, ('torch', ))[:-1]:
        reason = BACKENDS[name].why_not(call)
        if reason is None:
            return name
        if isinstance(reason, BrokenInstall):
            _warn_once(f'mmshufflemamba: {reason}. The automatic choice passes over {name} '
                       f'({BACKEND_ENV}={name} makes this an error).', RuntimeWarning)
    return 'torch'


@torch.compiler.assume_constant_result
def _chosen(device: str, index: Optional[int], dtype: torch.dtype, return_last_state: bool,
            requested: Optional[str]) -> str:
    """:func:`_choose`, logged. Under ``torch.compile`` it is evaluated once while tracing
    and its result is a constant of the graph (the choice, and :data:`BACKEND_ENV`, are
    read when a model is compiled, not at every call)."""
    name = _choose(ScanCall(device, dtype, return_last_state, index), requested)
    _announce(device, name, requested)
    return name


@functools.lru_cache(maxsize=None)
def _announce(device: str, backend: str, requested: Optional[str] = None) -> None:
    """Log the backend once per (device type, backend, request)."""
    from mmengine.logging import print_log
    source = (f'requested: {requested}' if requested is not None else
              f'{BACKEND_ENV}={os.environ.get(BACKEND_ENV, "auto")}')
    print_log(f'mmshufflemamba: the selective scan runs {BACKENDS[backend].description} for '
              f'{device} tensors ({source}).', logger='current')
    if device == 'cuda' and backend == 'torch' and requested is None and env_backend() is None:
        warnings.warn(_SLOW_CUDA_WARNING, RuntimeWarning, stacklevel=3)


def choose_backend(u: Tensor, return_last_state: bool = False,
                   requested: Optional[str] = None) -> str:
    """The backend for a call on ``u`` (:func:`scan_backend`), logged once per device and
    backend; raises RuntimeError under TorchScript tracing unless it is ``'stand_in'``.

    Mixers call it once per forward and pass the result to every :func:`selective_scan`.
    """
    name = _chosen(u.device.type, u.device.index, u.dtype, return_last_state, requested)
    if name not in TRACEABLE and (torch.jit.is_tracing() or torch.jit.is_scripting()):
        raise RuntimeError(_TRACING_REFUSED)
    return name


def selective_scan(u: Tensor,
                   delta: Tensor,
                   A: Tensor,
                   B: Tensor,
                   C: Tensor,
                   D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False,
                   return_last_state: bool = False,
                   *,
                   backend: Optional[str] = None) -> ScanOutput:
    """Selective scan; the only entry point (signature of mamba_ssm's ``selective_scan_fn``).

    Args:
        u: Input, ``(B, D, L)``.
        delta: Step sizes before bias/softplus, ``(B, D, L)``.
        A: State matrix (negative for stability), ``(D, N)``.
        B: Input matrix, ``(D, N)``, ``(B, N, L)`` or ``(B, G, N, L)``.
        C: Output matrix, shapes as ``B``.
        D: Skip connection, ``(D,)``.
        z: Gate, ``(B, D, L)``; the output is multiplied by ``silu(z)``.
        delta_bias: Added to ``delta``, ``(D,)``.
        delta_softplus: Apply softplus to ``delta + delta_bias``.
        return_last_state: Also return the final state ``(B, D, N)``.
        backend: The backend :func:`choose_backend` chose for this call, run without
            choosing again; None chooses here.

    Returns:
        ``y`` of shape ``(B, D, L)`` (and the last state if asked).
    """
    if backend is None:
        backend = choose_backend(u, return_last_state)
    return BACKENDS[backend].run(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                 return_last_state)
