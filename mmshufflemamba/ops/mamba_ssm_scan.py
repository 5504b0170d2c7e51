"""mamba_ssm's fused CUDA selective scan (``selective_scan_fn``), where it imports and passes
its check.

mamba_ssm cannot be imported without its CUDA extension, so an import failure where it is
not installed simply means "not here"; where it is installed, it means a broken install.
Its kernel takes float32, float16 and bfloat16 inputs, not float64.

Before the kernel is used on a device, :func:`verify` runs it once (per process and device)
on a tiny problem shaped like the mixer's calls, forward and backward, against the textbook
reference (:func:`~.reference_scan.selective_scan_reference`, the definition, rather than
another fast path, so a fault of that one cannot reject a good kernel). A broken install
(an import that fails, an exception, a wrong result) makes :func:`why_not` return a
:class:`~.scan_contract.BrokenInstall` that names the installed versions, what failed and
the command that fixes it: the automatic choice warns once and passes over mamba_ssm (the
Triton scan runs), a request for it raises that message.
"""
import functools
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .reference_scan import selective_scan_reference
from .scan_contract import BrokenInstall, ScanCall, ScanOutput
from .upstream_kernels import (check_kernel, import_kernel, installed_version, reinstall_command,
                               versions)

__all__ = ['load_mamba_ssm_scan', 'selective_scan_mamba_ssm', 'verify', 'why_not']


@functools.lru_cache(maxsize=None)
def _imported() -> Tuple[Optional[Callable], str]:
    """``(selective_scan_fn, '')``, or ``(None, what the import raised)``."""
    return import_kernel('mamba_ssm.ops.selective_scan_interface', 'selective_scan_fn')


def load_mamba_ssm_scan() -> Optional[Callable]:
    """mamba_ssm's ``selective_scan_fn``, or None where it cannot be imported."""
    return _imported()[0]


def _broken(what: str) -> BrokenInstall:
    return BrokenInstall(
        f"mamba_ssm's selective scan is installed but unusable: {what}. Installed: "
        f'{versions()}. To fix it, rebuild it against this torch: {reinstall_command()}; '
        'or uninstall it (pip uninstall mamba-ssm causal-conv1d): the Triton scan needs '
        'neither')


def tiny_problem(device: torch.device) -> Dict[str, Tensor]:
    """A seeded float32 problem like the mixer's calls (variable B/C ``(b, N, L)``, D, z,
    delta_bias), on ``device``; the global random state is left alone."""
    gen = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 8, 4, 37

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    return dict(u=rand(b, d, length), delta=rand(b, d, length),
                A=-torch.rand(d, n, generator=gen).add(0.5).to(device), B=rand(b, n, length),
                C=rand(b, n, length), D=rand(d), z=rand(b, d, length), delta_bias=rand(d))


@functools.lru_cache(maxsize=None)
def verify(device: str, index: Optional[int]) -> Optional[BrokenInstall]:
    """Run ``selective_scan_fn`` once on :func:`tiny_problem` on device ``(device, index)``
    (None: the current one), forward and backward, against the reference; cached per
    device. None when it agrees, else why it cannot be used."""
    scan = load_mamba_ssm_scan()
    where = torch.device(device) if index is None else torch.device(device, index)
    failure = check_kernel(
        lambda *args: scan(*args, delta_softplus=True),
        lambda *args: selective_scan_reference(*args, delta_softplus=True),
        tiny_problem(where))
    return None if failure is None else _broken(f'on {where}, {failure}')


def why_not(call: ScanCall) -> Optional[str]:
    """Why mamba_ssm's kernel cannot run ``call``, or None when it can; a
    :class:`~.scan_contract.BrokenInstall` when it is installed but unusable."""
    if load_mamba_ssm_scan() is None:
        if installed_version('mamba-ssm') is None:
            return ('mamba_ssm does not import here (it needs its CUDA build: pip install '
                    'mamba-ssm on a machine with a CUDA toolkit)')
        return _broken(f'mamba_ssm does not import ({_imported()[1]})')
    if call.dtype == torch.float64:
        return "mamba_ssm's kernel takes float32, float16 and bfloat16 inputs only"
    return verify(call.device, call.index)


def selective_scan_mamba_ssm(u: Tensor,
                             delta: Tensor,
                             A: Tensor,
                             B: Tensor,
                             C: Tensor,
                             D: Optional[Tensor] = None,
                             z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False,
                             return_last_state: bool = False) -> ScanOutput:
    """mamba_ssm's ``selective_scan_fn``, called as it is. Arguments as
    :func:`~mmshufflemamba.ops.selective_scan.selective_scan`; raises RuntimeError where
    mamba_ssm does not import."""
    scan = load_mamba_ssm_scan()
    if scan is None:
        raise RuntimeError(why_not(ScanCall(u.device.type, u.dtype)) + '.')
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
