"""What the package knows about the optional CUDA kernel packages mamba-ssm and
causal-conv1d: their installed versions, which releases call each other correctly, how to
fix an install, and the one check that runs a kernel on a tiny problem before it is used.

A leaf module: it imports no other module of :mod:`mmshufflemamba.ops`.

Why the check: the two packages change their compiled signatures between releases and are
often installed in pairs that do not match each other, or built against another torch or
for another GPU. Users of the upstream projects then see ``causal_conv1d_fwd():
incompatible function arguments``, ``'NoneType' object has no attribute
'causal_conv1d_fwd'``, ``undefined symbol`` or ``no kernel image is available``, or,
worse, nothing at all. So each kernel runs once per process and device on a tiny input,
forward and backward, against the package's own PyTorch definition before it is trusted.
"""
import functools
import importlib
import importlib.metadata
import re
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    'installed_version', 'versions', 'reinstall_command', 'import_kernel', 'describe_error',
    'check_kernel'
]

# The causal-conv1d releases whose compiled ``causal_conv1d_fwd`` a mamba-ssm release's own
# ``mamba_inner_fn`` calls with the right arguments (read from both packages' sources): from
# that mamba-ssm version on, the pip requirement. 1.0.x calls it with 4 arguments, 1.1.x
# with 5, 1.2.0 to 2.2.4 with 7 (``causal_conv1d_cuda``), 2.2.5 on through
# ``causal_conv1d.cpp_functions`` (causal-conv1d 1.5.1 on, whose binding takes 8).
CAUSAL_CONV1D_FOR = (((1, 0), '>=1.0,<1.1'), ((1, 1), '>=1.1,<1.2'), ((1, 2), '>=1.2,<1.5.1'),
                     ((2, 2, 5), '>=1.5.1'))
TOLERANCE = 1e-3  # the largest relative difference a correct float32 kernel shows here


@functools.lru_cache(maxsize=None)
def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a pip distribution (``'mamba-ssm'``), or None; looked up
    once per process (the dispatcher asks at every call where the kernel does not import)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> str:
    """The installed kernel packages and torch, e.g. ``mamba-ssm 2.2.4, causal-conv1d
    1.5.2, torch 2.6.0 (CUDA 12.4)``."""
    found = [f'{name} {installed_version(name) or "not installed"}'
             for name in ('mamba-ssm', 'causal-conv1d')]
    return ', '.join(found + [f'torch {torch.__version__} (CUDA {torch.version.cuda})'])


def _release(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r'\d+', version.split('+')[0])[:3])


def reinstall_command() -> str:
    """The pip command that rebuilds the installed kernel packages against this torch, with
    a causal-conv1d that matches the installed mamba-ssm."""
    mamba, conv = installed_version('mamba-ssm'), installed_version('causal-conv1d')
    if mamba is not None:
        matching = next((spec for first, spec in reversed(CAUSAL_CONV1D_FOR)
                         if _release(mamba) >= first), CAUSAL_CONV1D_FOR[0][1])
        specs = [f'"mamba-ssm=={mamba}"', f'"causal-conv1d{matching}"']
    else:
        specs = [f'"causal-conv1d=={conv}"' if conv else 'causal-conv1d']
    return ('pip install --no-build-isolation --no-cache-dir --force-reinstall '
            + ' '.join(specs))


def describe_error(error: BaseException) -> str:
    """``'TypeError: <the first line of its message>'``."""
    return f'{type(error).__name__}: {(str(error).strip().splitlines() or [""])[0]}'


def import_kernel(module: str, name: str) -> Tuple[Optional[Callable], str]:
    """``(module.name, '')``, or ``(None, what the import raised)``: an ImportError, or an
    OSError/RuntimeError from a CUDA extension that fails to load."""
    try:
        return getattr(importlib.import_module(module), name), ''
    except Exception as error:
        return None, describe_error(error)


def check_kernel(kernel: Callable[..., Tensor], reference: Callable[..., Tensor],
                 inputs: Dict[str, Tensor]) -> Optional[str]:
    """Run ``kernel`` and ``reference`` on ``inputs`` (float32 tensors, passed in order),
    forward and backward (the gradient of the output's sum against fixed weights).

    Returns None when outputs and gradients agree within :data:`TOLERANCE`, else what
    failed: the exception the kernel raised (type and first line), or the largest relative
    difference and where. Runs with autograd on and autocast off, whatever the caller's.
    """
    results = []
    device = next(iter(inputs.values())).device.type
    for fn in (kernel, reference):
        try:  # the caller may be in no_grad, inference_mode or autocast: none of them here
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(
                    device, enabled=False):
                leaves = [t.detach().clone().requires_grad_() for t in inputs.values()]
                out = fn(*leaves)
                weight = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
                grads = torch.autograd.grad((out.float() * weight).sum(), leaves,
                                            allow_unused=True)
        except Exception as error:  # whatever the kernel raises is the verdict
            if fn is reference:
                raise
            return f'it raised {describe_error(error)}'
        results.append([out] + list(grads))
    names = ['the output'] + [f'the gradient of {name}' for name in inputs]
    for name, got, want in zip(names, *results):
        if got is None or want is None or got.shape != want.shape:
            return (f'it computed something else: {name} is '
                    f'{None if got is None else tuple(got.shape)}, expected '
                    f'{None if want is None else tuple(want.shape)}')
        error = ((got.float() - want.float()).abs().max() /
                 want.float().abs().max().clamp(min=1e-6)).item()
        if not error <= TOLERANCE:  # NaN fails too
            return (f'it computed something else: {name} differs from the PyTorch '
                    f'definition by {error:.3g} (relative; at most {TOLERANCE} expected)')
    return None
