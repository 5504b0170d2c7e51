"""Selective scan (the S6 recurrence of Mamba) behind one entry point.

``selective_scan`` has the signature of ``mamba_ssm``'s ``selective_scan_fn`` and computes,
for every channel ``d`` and state ``n``::

    dt_t = softplus(delta_t + delta_bias)          (softplus only if delta_softplus)
    h_t  = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t  = sum_n C_t[n] * h_t[n] + D[d] * u_t
    y_t  = y_t * silu(z_t)                         (only if z is given)

Backends, chosen per call by :func:`scan_backend` (logged once per device and backend):

* CUDA tensors: ``mamba_ssm``'s fused CUDA kernel when it imports (not for float64, which
  it does not take); else :func:`~.triton_scan.selective_scan_triton`, this package's
  Triton kernel, which needs no CUDA build (Triton ships with CUDA builds of torch); else
  the PyTorch scan, with one warning that says how to get a fast path;
* CPU tensors: :func:`selective_scan_cpu`, this package's compiled C++ kernel: forward
  and a backward that recomputes the states chunk by chunk from checkpoints (so it stores
  ``L / 64`` states per row instead of ``L``), everything fused; built on first use (see
  :mod:`mmshufflemamba.ops.cpu_kernel`);
* otherwise, and as the fallback everywhere: :func:`selective_scan_torch`, this package's
  PyTorch implementation, which runs on any device: one autograd function whose only
  sequential part is one fused multiply-add per step on contiguous time-major slices,
  forward and backward (the adjoint recurrence, written by hand).

``MMSHUFFLEMAMBA_SCAN_BACKEND`` (``auto``, ``mamba_ssm``, ``triton``, ``compiled`` or
``torch``) forces one backend for every call; a forced backend that cannot run the call is
an error, not a silent fallback. ``MMSHUFFLEMAMBA_COMPILED_SCAN=0`` keeps only the
compiled CPU kernel out of ``auto``.

Exporting: ``torch.export`` keeps the kernels as custom ops. Inside :func:`onnx_exportable`
every call runs :func:`selective_scan_exportable` instead, the recurrence written with
``torch.ops.higher_order.scan``, which the ONNX exporter (``torch.onnx.export(dynamo=True)``)
turns into an ONNX loop over any sequence length. TorchScript tracing (``torch.jit.trace``,
and ``torch.onnx.export(dynamo=False)``, which mmdeploy uses) can represent no path: it would
record the compiled kernel as an opaque call, or unroll the PyTorch scan for one length,
and write a model that silently computes something else, so the scan refuses to be traced.

:func:`selective_scan_reference` is the plain sequential definition (the textbook loop that
indexes full tensors at every step). It is slow, quadratic in ``L`` in the backward pass,
and exists only to check the fast paths against and to benchmark them.
"""
import contextlib
import functools
import os
import warnings
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .cpu_kernel import load_cpu_kernel

__all__ = [
    'selective_scan', 'selective_scan_cpu', 'selective_scan_torch', 'selective_scan_reference',
    'selective_scan_exportable', 'selective_scan_flops', 'scan_backend', 'BACKEND_ENV',
    'onnx_exportable', 'refuse_tracing', 'tracing_allowed'
]

BACKEND_ENV = 'MMSHUFFLEMAMBA_SCAN_BACKEND'
BACKENDS = ('mamba_ssm', 'triton', 'compiled', 'torch')
_EXPORTABLE = [False]  # inside onnx_exportable()
_TRACING_ALLOWED = [False]  # inside tracing_allowed()


@contextlib.contextmanager
def tracing_allowed() -> Iterator[None]:
    """Let TorchScript tracing through :func:`refuse_tracing`: only for analysis that does
    not need the scan's values (tools/analysis_tools/get_flops.py traces with a stand-in
    scan and adds the scan's FLOPs itself). The traced graph does not contain the scan."""
    previous, _TRACING_ALLOWED[0] = _TRACING_ALLOWED[0], True
    try:
        yield
    finally:
        _TRACING_ALLOWED[0] = previous


@contextlib.contextmanager
def onnx_exportable() -> Iterator[None]:
    """Within this context every scan (and the mixers) runs the exportable formulation,
    :func:`selective_scan_exportable`, for ``torch.onnx.export(dynamo=True)``."""
    previous, _EXPORTABLE[0] = _EXPORTABLE[0], True
    try:
        yield
    finally:
        _EXPORTABLE[0] = previous


def refuse_tracing() -> None:
    """Raise under TorchScript tracing, which cannot represent the selective scan."""
    if (torch.jit.is_tracing() or torch.jit.is_scripting()) and not _TRACING_ALLOWED[0]:
        raise RuntimeError(
            'TorchScript tracing (torch.jit.trace, and torch.onnx.export with dynamo=False, '
            'the exporter mmdeploy uses) cannot represent the selective scan: it records the '
            'compiled kernel as an opaque call, or unrolls the PyTorch scan for one sequence '
            'length, and the exported model computes something else without a word. Export '
            'to ONNX with tools/deployment/export_onnx.py (torch.onnx.export(dynamo=True) '
            'inside mmshufflemamba.ops.onnx_exportable()), or use torch.export.export.')

ScanOutput = Union[Tensor, Tuple[Tensor, Tensor]]


@functools.lru_cache(maxsize=None)
def _mamba_ssm_scan() -> Optional[Callable]:
    """mamba_ssm's CUDA ``selective_scan_fn``, or None where it cannot be imported.

    mamba_ssm cannot even be imported without its CUDA extension, so any import failure
    simply means "no fast path". Only called for CUDA tensors.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or OSError/RuntimeError from a broken CUDA build
        return None
    return selective_scan_fn


class _InputMatrix:
    """B or C in the scan's time-major layout, as a compact tensor plus its einsum spec.

    ``(D, N)`` -> spec ``dn``; ``(b, N, L)`` -> ``(L, b, N)``, spec ``lbn``;
    ``(b, G, N, L)`` -> ``(L, b, D, N)`` (groups repeated over channels), spec ``lbdn``.
    """

    def __init__(self, M: Tensor, channels: int):
        if M.dim() == 2:
            self.spec, self.data = 'dn', M
        elif M.dim() == 3:
            self.spec, self.data = 'lbn', M.permute(2, 0, 1).contiguous()
        else:  # (b, G, N, L); shapes were checked by _check_inputs
            self.spec = 'lbdn'
            self.data = M.repeat_interleave(channels // M.shape[1], dim=1).permute(
                3, 0, 1, 2).contiguous()

    def broadcast(self) -> Tensor:
        """A view that broadcasts against ``(L, b, D, N)``."""
        return self.data.unsqueeze(2) if self.spec == 'lbn' else self.data

    def contract(self, full: Tensor, per_channel: Tensor) -> Tensor:
        """Gradient w.r.t. ``data`` of ``sum(full * per_channel[..., None] * M)``.

        ``full`` is ``(L, b, D, N)`` and ``per_channel`` ``(L, b, D)``; autograd carries the
        result back through the layout change to the matrix as it was given.
        """
        return torch.einsum(f'lbdn,lbd->{self.spec}', full, per_channel)


class _SelectiveScanCore(torch.autograd.Function):
    """``y_t = sum_n C_t h_t`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t``.

    Time-major inside: ``delta`` and ``u`` as ``(L, b, D)``; states ``(L, b, D, N)``.
    The recurrence is one fused multiply-add per step on contiguous slices; the backward
    runs the adjoint recurrence ``g_t = C_t grad_y_t + exp(delta_{t+1} A) g_{t+1}`` the same
    way, recomputing ``exp(delta A)`` rather than keeping it, so only the states are saved.
    """

    @staticmethod
    def forward(ctx, delta: Tensor, u: Tensor, A: Tensor, B_mat: _InputMatrix,
                C_mat: _InputMatrix, B_data: Tensor, C_data: Tensor) -> Tensor:
        # B_data/C_data are B_mat.data/C_mat.data, passed so autograd tracks them.
        decay = torch.exp(delta.unsqueeze(-1) * A)  # (L, b, D, N)
        h = (delta * u).unsqueeze(-1) * B_mat.broadcast()  # (L, b, D, N)
        for t in range(1, h.shape[0]):
            h[t].addcmul_(decay[t], h[t - 1])
        del decay
        ctx.save_for_backward(delta, u, A, B_data, C_data, h)
        ctx.matrices = (B_mat, C_mat)
        return torch.einsum(f'lbdn,{C_mat.spec}->lbd', h, C_data)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        delta, u, A, _, C_data, h = ctx.saved_tensors
        B_mat, C_mat = ctx.matrices
        grad_y = grad_y.contiguous()
        grad_C = C_mat.contract(h, grad_y)
        g = grad_y.unsqueeze(-1) * C_mat.broadcast()  # dL/dh_t from the output only
        decay = torch.exp(delta.unsqueeze(-1) * A)
        for t in range(g.shape[0] - 2, -1, -1):
            g[t].addcmul_(decay[t + 1], g[t + 1])  # g_t is now dL/dh_t in full
        # h_t = decay_t * h_{t-1} + (delta_t u_t) B_t
        grad_du = torch.einsum(f'lbdn,{B_mat.spec}->lbd', g, B_mat.data)
        grad_B = B_mat.contract(g, delta * u)
        # d decay_t = g_t * h_{t-1}; d(delta_t A) = d decay_t * decay_t (t >= 1)
        decay[0].zero_()
        decay[1:].mul_(g[1:]).mul_(h[:-1])
        grad_delta = torch.einsum('lbdn,dn->lbd', decay, A) + grad_du * u
        grad_A = torch.einsum('lbdn,lbd->dn', decay, delta)
        return grad_delta, grad_du * delta, grad_A, None, None, grad_B, grad_C


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """Shapes shared by every path; raises ValueError naming the input and its shape."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError('u and delta must both have shape (B, D, L); got '
                         f'{tuple(u.shape)} and {tuple(delta.shape)}.')
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f'A must have shape (D, N) with D = {u.shape[1]}; got '
                         f'{tuple(A.shape)}.')
    if A.is_complex():
        raise NotImplementedError('complex A is not supported by mmshufflemamba.')
    _check_matrix(B, u, 'B')
    _check_matrix(C, u, 'C')


def _check_matrix(M: Tensor, u: Tensor, name: str) -> None:
    batch, channels, length = u.shape
    if M.dim() == 2 and M.shape[0] == channels:
        return
    if M.dim() in (3, 4) and M.shape[0] == batch and M.shape[-1] == length:
        if M.dim() == 4 and channels % M.shape[1]:
            raise ValueError(f'{name} has {M.shape[1]} groups, which do not divide the '
                             f'{channels} channels of u.')
        return
    raise ValueError(f'{name} must have shape (D, N), (B, N, L) or (B, G, N, L) with '
                     f'(B, D, L) = {tuple(u.shape)}; got {tuple(M.shape)}.')


def _in_compute_dtype(u: Tensor, delta: Tensor, A: Tensor, delta_bias: Optional[Tensor],
                      delta_softplus: bool) -> Tuple[torch.dtype, Tensor, Tensor, Tensor]:
    """``u``, ``delta`` (bias added, softplus applied) and ``A`` in the scan's compute
    dtype: float32, or float64 for float64 inputs. Returns ``(compute, u, delta, A)``."""
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return compute, u, delta, A


def _skip_and_gate(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """``(y + D u) * silu(z)`` (either term only when given), in ``y``'s dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_torch(u: Tensor,
                         delta: Tensor,
                         A: Tensor,
                         B: Tensor,
                         C: Tensor,
                         D: Optional[Tensor] = None,
                         z: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None,
                         delta_softplus: bool = False,
                         return_last_state: bool = False) -> ScanOutput:
    """The PyTorch selective scan (any device). Arguments as :func:`selective_scan`.

    Computed in float32 (float64 stays float64), with autocast disabled, so the state
    never drops to half precision; the output has the dtype of ``u``.
    """
    with torch.autocast(device_type=u.device.type, enabled=False):
        return _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state)


def _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          return_last_state) -> Tensor:
    _check_inputs(u, delta, A, B, C)
    if return_last_state:
        raise NotImplementedError(
            'return_last_state is supported by the CUDA kernel and by '
            'selective_scan_reference only; the PyTorch path does not return it.')
    dtype_in = u.dtype
    compute, u, delta, A = _in_compute_dtype(u, delta, A, delta_bias, delta_softplus)
    channels = u.shape[1]
    B_mat = _InputMatrix(B.to(compute), channels)
    C_mat = _InputMatrix(C.to(compute), channels)
    delta_t = delta.permute(2, 0, 1).contiguous()  # (L, b, D)
    u_t = u.permute(2, 0, 1).contiguous()
    y = _SelectiveScanCore.apply(delta_t, u_t, A, B_mat, C_mat, B_mat.data,
                                 C_mat.data).permute(1, 2, 0)  # (b, D, L)
    return _skip_and_gate(y, u, D, z).to(dtype_in)


def _kernel_layout(M: Tensor) -> Tensor:
    """B or C as the compiled kernel reads it: ``(D, N)`` or ``(b, G, L, N)``, contiguous."""
    if M.dim() == 2:
        return M.contiguous()
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.transpose(2, 3).contiguous()


class _CompiledScan(torch.autograd.Function):
    """The whole scan (bias, softplus, D, z included) in the compiled CPU kernel."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                delta_softplus: bool) -> Tensor:
        kernel = load_cpu_kernel()
        B_k, C_k = _kernel_layout(B), _kernel_layout(C)
        out, checkpoints = kernel.forward(u, delta, A, B_k, C_k, D, z, delta_bias,
                                          delta_softplus)
        ctx.save_for_backward(u, delta, A, B_k, C_k, D, z, delta_bias, checkpoints)
        ctx.delta_softplus = delta_softplus
        ctx.matrix_shapes = (B.shape, C.shape)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        u, delta, A, B_k, C_k, D, z, delta_bias, checkpoints = ctx.saved_tensors
        grads = load_cpu_kernel().backward(grad_out.contiguous(), u, delta, A, B_k, C_k, D, z,
                                           delta_bias, ctx.delta_softplus, checkpoints)
        grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias = grads
        grad_B, grad_C = (g if g.dim() == 2 else g.transpose(2, 3).reshape(shape)
                          for g, shape in zip((grad_B, grad_C), ctx.matrix_shapes))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias, None


def selective_scan_cpu(u: Tensor,
                       delta: Tensor,
                       A: Tensor,
                       B: Tensor,
                       C: Tensor,
                       D: Optional[Tensor] = None,
                       z: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None,
                       delta_softplus: bool = False,
                       return_last_state: bool = False) -> ScanOutput:
    """The compiled CPU scan. Arguments as :func:`selective_scan`.

    Computed in float32 (float64 stays float64; bfloat16/float16 inputs are computed in
    float32), with autocast disabled; the output has the dtype of ``u``. Raises
    RuntimeError where the kernel could not be built (``selective_scan`` falls back instead).
    """
    _check_inputs(u, delta, A, B, C)
    if return_last_state:
        raise NotImplementedError(
            'return_last_state is supported by the CUDA kernel and by '
            'selective_scan_reference only; the CPU paths do not return it.')
    if u.device.type != 'cpu':
        raise ValueError(f'selective_scan_cpu takes CPU tensors; got {u.device}.')
    if load_cpu_kernel() is None:
        raise RuntimeError('the compiled CPU selective scan is not available here; use '
                           'selective_scan (which falls back) or selective_scan_torch.')
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32

    def prepare(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(compute).contiguous()

    with torch.autocast(device_type='cpu', enabled=False):
        y = _CompiledScan.apply(*map(prepare, (u, delta, A, B, C, D, z, delta_bias)),
                                delta_softplus)
    return y.to(u.dtype)


def _forced_backend() -> Optional[str]:
    value = os.environ.get(BACKEND_ENV, 'auto').strip().lower()
    if value in ('', 'auto'):
        return None
    if value not in BACKENDS:
        raise ValueError(f'{BACKEND_ENV}={value!r} is not a selective-scan backend; use auto '
                         f'or one of {", ".join(BACKENDS)}.')
    return value


def _why_not(backend: str, device: str, dtype: torch.dtype,
             return_last_state: bool) -> Optional[str]:
    """Why ``backend`` cannot run a call on ``device``/``dtype``, or None when it can."""
    from . import triton_scan
    if backend == 'mamba_ssm':
        if _mamba_ssm_scan() is None:
            return 'mamba_ssm does not import here (it needs its CUDA build: pip install ' \
                   'mamba-ssm on a machine with a CUDA toolkit)'
        if dtype == torch.float64:
            return "mamba_ssm's kernel takes float32, float16 and bfloat16 inputs only"
    elif backend == 'triton':
        if not triton_scan.triton_available():
            return 'Triton >= 3.4 with CUDA (or TRITON_INTERPRET=1 on CPU) is not available'
    elif backend == 'compiled':
        if device != 'cpu':
            return f'the compiled kernel runs CPU tensors, not {device}'
        if return_last_state:
            return 'the compiled kernel does not return the last state'
        if load_cpu_kernel() is None:
            return 'the compiled CPU kernel could not be built (see the warning above)'
    elif backend == 'torch' and return_last_state:
        return 'the PyTorch scan does not return the last state'
    return None


_SLOW_CUDA_WARNING = (
    'mmshufflemamba: no fast selective scan for CUDA tensors here (mamba_ssm does not import '
    'and Triton >= 3.4 is not available), so the PyTorch scan runs: one step at a time, far '
    'too slow for training. Install Triton (it comes with the CUDA builds of torch: pip '
    'install triton) or mamba-ssm (pip install mamba-ssm, built against your torch).')


@functools.lru_cache(maxsize=None)
def _announce(device: str, backend: str) -> None:
    """Log the backend once per (device type, backend)."""
    from mmengine.logging import print_log
    names = {'mamba_ssm': "mamba_ssm's CUDA kernel", 'triton': 'the Triton kernel',
             'compiled': 'the compiled CPU kernel', 'torch': 'the PyTorch scan'}
    print_log(f'mmshufflemamba: the selective scan runs {names[backend]} for {device} '
              f'tensors ({BACKEND_ENV}={os.environ.get(BACKEND_ENV, "auto")}).',
              logger='current')
    if device == 'cuda' and backend == 'torch' and _forced_backend() is None:
        warnings.warn(_SLOW_CUDA_WARNING, RuntimeWarning, stacklevel=3)


def scan_backend(u: Tensor, return_last_state: bool = False) -> str:
    """The backend :func:`selective_scan` uses for ``u``: ``'mamba_ssm'``, ``'triton'``,
    ``'compiled'`` or ``'torch'`` (see the module docstring for the order).

    Raises RuntimeError when :data:`BACKEND_ENV` forces a backend that cannot run the call.
    """
    return backend_for(u.device.type, u.dtype, return_last_state)


@torch.compiler.assume_constant_result
def backend_for(device: str, dtype: torch.dtype, return_last_state: bool = False) -> str:
    """:func:`scan_backend` for a device type and dtype. Under ``torch.compile`` it is
    evaluated once while tracing and its result is a constant of the graph (so the choice,
    and :data:`BACKEND_ENV`, are read when a model is compiled, not at every call)."""
    forced = _forced_backend()
    if forced is not None:
        reason = _why_not(forced, device, dtype, return_last_state)
        if reason:
            raise RuntimeError(f'{BACKEND_ENV}={forced} cannot run this call: {reason}. '
                               f'Unset it (auto) or choose another backend.')
        return forced
    if device == 'cuda':
        candidates = ('mamba_ssm', 'triton', 'torch')
    elif device == 'cpu':
        candidates = ('compiled', 'torch')
    else:
        candidates = ('torch', )
    return next(b for b in candidates
                if b == 'torch' or _why_not(b, device, dtype, return_last_state) is None)


def selective_scan(u: Tensor,
                   delta: Tensor,
                   A: Tensor,
                   B: Tensor,
                   C: Tensor,
                   D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False,
                   return_last_state: bool = False) -> ScanOutput:
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

    Returns:
        ``y`` of shape ``(B, D, L)`` (and the last state if asked).
    """
    refuse_tracing()
    if _EXPORTABLE[0]:
        return selective_scan_exportable(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         return_last_state)
    backend = scan_backend(u, return_last_state)
    _announce(u.device.type, backend)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == 'mamba_ssm':
        return _mamba_ssm_scan()(*args)
    if backend == 'triton':
        from .triton_scan import selective_scan_triton
        return selective_scan_triton(*args)
    if backend == 'compiled':
        return selective_scan_cpu(*args)
    return selective_scan_torch(*args)


def selective_scan_exportable(u: Tensor,
                              delta: Tensor,
                              A: Tensor,
                              B: Tensor,
                              C: Tensor,
                              D: Optional[Tensor] = None,
                              z: Optional[Tensor] = None,
                              delta_bias: Optional[Tensor] = None,
                              delta_softplus: bool = False,
                              return_last_state: bool = False) -> ScanOutput:
    """The scan as ``torch.ops.higher_order.scan`` over time: exportable with any sequence
    length (the ONNX exporter makes it an ONNX loop). Arguments as :func:`selective_scan`;
    for export and inference (it materialises ``exp(delta A)`` for all steps).
    """
    from torch._higher_order_ops.scan import scan
    _check_inputs(u, delta, A, B, C)
    dtype_in = u.dtype
    compute, u, delta, A = _in_compute_dtype(u, delta, A, delta_bias, delta_softplus)
    channels = u.shape[1]

    def per_step(M: Tensor) -> Tensor:  # -> (L, b, D, N), or (D, N) when shared
        if M.dim() == 2:
            return M.to(compute)
        if M.dim() == 3:
            M = M.unsqueeze(1)
        M = M.to(compute).repeat_interleave(channels // M.shape[1], dim=1)
        return M.permute(3, 0, 1, 2)

    B_t, C_t = per_step(B), per_step(C)
    decay = torch.exp(delta.permute(2, 0, 1).unsqueeze(-1) * A)  # (L, b, D, N)
    drive = (delta * u).permute(2, 0, 1).unsqueeze(-1) * B_t  # (L, b, D, N)
    readout = C_t.expand_as(decay)

    def step(h, xs):
        a, x, c = xs
        h = a * h + x
        return h, (h * c).sum(-1)

    last, ys = scan(step, torch.zeros_like(decay[0]), (decay, drive, readout))
    y = _skip_and_gate(ys.permute(1, 2, 0), u, D, z).to(dtype_in)  # (b, D, L)
    return (y, last) if return_last_state else y


def selective_scan_reference(u: Tensor,
                             delta: Tensor,
                             A: Tensor,
                             B: Tensor,
                             C: Tensor,
                             D: Optional[Tensor] = None,
                             z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False,
                             return_last_state: bool = False) -> ScanOutput:
    """The sequential definition, step by step over full tensors (slow; tests/benchmarks).

    Deliberately written the textbook way: ``exp(delta * A)`` and ``delta * B * u`` are
    built for all steps and indexed (``[:, :, t]``) inside the loop, which makes autograd's
    backward pass quadratic in ``L``. Computed in the dtype of ``u`` promoted to float32.
    """
    _check_inputs(u, delta, A, B, C)
    dtype_in = u.dtype
    compute = torch.promote_types(u.dtype, torch.float32)
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, channels, length = u.shape
    groups_B = B.shape[1] if B.dim() == 4 else 1
    groups_C = C.shape[1] if C.dim() == 4 else 1

    def per_step(M: Tensor, groups: int) -> Tensor:  # -> (b, D, N, L) or (D, N)
        M = M.to(compute)
        if M.dim() == 3:
            return M.unsqueeze(1)
        if M.dim() == 4:
            return M.repeat_interleave(channels // groups, dim=1)
        return M

    B_all, C_all = per_step(B, groups_B), per_step(C, groups_C)
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    if B_all.dim() == 2:
        deltaB_u = torch.einsum('bdl,dn,bdl->bdln', delta, B_all, u)
    else:
        deltaB_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B_all.expand(
            batch, channels, -1, -1), u)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = deltaA[:, :, t] * h + deltaB_u[:, :, t]
        if C_all.dim() == 2:
            ys.append(torch.einsum('bdn,dn->bd', h, C_all))
        else:
            ys.append(torch.einsum('bdn,bdn->bd', h, C_all[..., t].expand_as(h)))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def selective_scan_flops(batch: int, channels: int, length: int, state: int,
                         with_D: bool = True, with_z: bool = True) -> int:
    """Floating-point operations of one :func:`selective_scan` call (multiply-adds = 2).

    Per element ``(b, d, t, n)``: ``delta * A`` (1), ``exp`` (1), ``delta * u * B`` (2),
    ``h = a * h + b`` (2), ``C * h`` summed over ``n`` (2), plus ``softplus`` of delta
    per ``(b, d, t)`` counted as 1 more per state: 9 per element. Per ``(b, d, t)``: the
    ``D * u`` skip (2) and the ``silu(z)`` gate (5). Tracing FLOP counters see none of
    this (it runs in a custom kernel or a Python loop), so tools add it explicitly.
    """
    flops = 9 * batch * channels * length * state
    flops += (2 * with_D + 5 * with_z) * batch * channels * length
    return flops
