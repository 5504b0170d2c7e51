"""Selective scan in Triton: forward and backward, parallel across channels and along the sequence.

:func:`selective_scan_triton` has the signature and semantics of
:func:`~mmshufflemamba.ops.selective_scan.selective_scan` (``mamba_ssm``'s
``selective_scan_fn``), ``return_last_state`` included. Its kernels live in
:mod:`.triton_scan_kernels`; they run compiled on CUDA tensors, or on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests run them. This module
imports without Triton; :func:`triton_available` says whether the kernels can run.

Design
------
The sequence is cut into ``K = cdiv(L, CHUNK)`` chunks (``CHUNK = 32``). Each chunk kernel
runs one program per (block of ``BLOCK_D = 4`` channels, chunk, batch element) on a
``(BLOCK_D, CHUNK, N)`` tile and scans along the chunk in parallel: ``tl.associative_scan``
over the pairs ``(a_t, x_t)`` of ``h_t = a_t h_{t-1} + x_t``, ``a_t = exp(dt_t A)``,
``x_t = dt_t u_t B_t``. For ShuffleMamba-S at 512 px (b = 2, D = 768, N = 16, L = 1025)
that is 2 * 192 * 33 = 12672 programs per chunk kernel.

Forward, three launches:

1. chunk end states: each chunk's final state from a zero state,
   ``sum_t exp(A sum_{s>t} dt_s) x_t``, and its summed step size ``S_c`` (its total decay
   is ``exp(A S_c)``);
2. carry: one program per (channel block, batch element) walks the ``K`` chunks,
   ``start_{c+1} = exp(A S_c) start_c + end_c``; the start states are the checkpoints and
   the state after the last chunk is the last state;
3. chunk scan: each chunk scans again from its start state and writes ``y``
   (``D u`` and the ``silu(z)`` gate included).

Backward, the same three in reverse, for the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}``
(``dy = grad_y silu(z)``, ``g_t = dLoss/dh_t``):

1. each chunk's contribution, from its own outputs, to the adjoint before it;
2. carry from the last chunk to the first, starting from the last state's gradient: the
   adjoint entering each chunk from its right;
3. per chunk: the states recomputed from its checkpoint (as forward 3), the adjoint by one
   reverse scan, then every gradient; parameter gradients leave as per-program partial
   sums that torch adds up (over batch and chunks, or over the channel blocks of a group).

Saved for backward: the (contiguous) inputs, the checkpoints ``(b, D, K, N)`` (L / CHUNK
states per (b, d, n), not L) and the summed step sizes ``(b, D, K)``; no states, no
outputs. Backward also allocates partial sums of ``(b, K, D, N)`` for A (and each shared
B / C) and ``(b, cdiv(D, BLOCK_D), N, L)`` for each variable or grouped B / C.

Computed in float32 (float64 when u is float64) whatever the inputs' dtypes: bf16 / fp16
inputs are read as they are and keep a float32 state; ``y`` has u's dtype, the last state
the computation's dtype, gradients their inputs' dtypes.
"""
import functools
import importlib
from types import ModuleType
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .scan_contract import ScanCall, ScanOutput, check_inputs

__all__ = ['selective_scan_triton', 'triton_available', 'why_not']

CHUNK = 32  # steps per chunk (a power of two): one checkpoint and one parallel scan each
BLOCK_D = 4  # channels per program (a power of two; halved until it divides a B/C group)
# float64 tiles take twice the registers: at 4 channels the backward chunk kernel needs 255
# registers and spills on sm_90 (benchmarks/triton_compile_check.py); at 2 it does not
FP64_BLOCK_D = 2
NUM_WARPS = 4
# Register limits (ptxas maxnreg) per (kernel, compute dtype), from
# benchmarks/triton_compile_check.py: left to itself, ptxas aimed at 128 registers for a
# float32 specialisation of the backward kernel (bf16 inputs, no D/z/bias, sm_80) and
# spilled; at 168 no specialisation spills and 3 blocks of 4 warps fit an SM on sm_80 and
# sm_90 (without a limit it took 183 on sm_90: 2 blocks). float64 needs up to 248.
REGISTER_LIMITS = {('chunk_scan_backward_kernel', torch.float32): 168}


@functools.lru_cache(maxsize=None)
def _triton() -> Optional[ModuleType]:
    """Triton 3.4 or later (it has ``triton.knobs``), or None where it cannot be imported."""
    try:
        import triton
    except Exception:  # ImportError, or a broken install
        return None
    return triton if hasattr(triton, 'knobs') else None


def _interpreting() -> bool:
    """Whether ``triton.jit`` now decorates for the interpreter (``TRITON_INTERPRET``)."""
    return bool(_triton().knobs.runtime.interpret)


def triton_available() -> bool:
    """True when Triton (3.4 or later) imports and its kernels can run here: CUDA is
    available, or the interpreter is on (``TRITON_INTERPRET=1``) to run them on CPU."""
    return _triton() is not None and (torch.cuda.is_available() or _interpreting())


def why_not(call: ScanCall) -> Optional[str]:
    """Why the Triton kernels cannot run ``call``, or None when they can."""
    if not triton_available():
        return 'Triton >= 3.4 with CUDA (or TRITON_INTERPRET=1 on CPU) is not available'
    if call.device != 'cuda' and not _interpreting():
        return (f'the Triton kernels run CUDA tensors, not {call.device} ones (those only '
                'under TRITON_INTERPRET=1)')
    return None


def _kernels() -> ModuleType:
    """The kernel module, decorated for the current mode.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so the module is imported
    on first use and reloaded if the mode has changed since.
    """
    from . import triton_scan_kernels as kernels
    if kernels.INTERPRETED != _interpreting():
        kernels = importlib.reload(kernels)
    return kernels


class _Layout(NamedTuple):
    """How the kernels read B or C."""
    var: bool  # (b, G, N, L), else shared (D, N)
    groups: int  # G; 1 when shared
    group_size: int  # channels per group; D when shared


def _kernel_matrix(M: Tensor, channels: int) -> Tuple[Tensor, _Layout]:
    """B or C from ``(D, N)``, ``(b, N, L)`` or ``(b, G, N, L)`` (shapes already checked) to
    contiguous ``(D, N)`` or ``(b, G, N, L)`` (``(b, N, L)`` as ``G = 1``), and its layout."""
    if M.dim() == 2:
        return M.contiguous(), _Layout(False, 1, channels)
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.contiguous(), _Layout(True, M.shape[1], channels // M.shape[1])


def _check_optional(u: Tensor, D: Optional[Tensor], z: Optional[Tensor],
                    delta_bias: Optional[Tensor]) -> None:
    """Shapes of the optional inputs (the kernels index them unchecked)."""
    for name, t, shape in (('D', D, u.shape[1:2]), ('z', z, u.shape),
                           ('delta_bias', delta_bias, u.shape[1:2])):
        if t is not None and t.shape != shape:
            raise ValueError(f'{name} must have shape {tuple(shape)}; got {tuple(t.shape)}.')


class _Tiling(NamedTuple):
    """Sizes of one call and how its kernels cut them."""
    batch: int
    channels: int
    length: int
    state: int
    chunk: int
    num_chunks: int
    block_d: int
    num_blocks: int
    block_n: int
    compute: torch.dtype

    @classmethod
    def of(cls, u: Tensor, A: Tensor, layouts: Sequence[_Layout], chunk: int,
           block_d: int) -> '_Tiling':
        """For u ``(b, D, L)`` and A ``(D, N)``; ``block_d`` is at most
        :data:`FP64_BLOCK_D` in float64, and halved until it divides the channels per group
        of every grouped matrix, so that a program's channels share one group."""
        batch, channels, length = u.shape
        state = A.shape[1]
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        if compute == torch.float64:
            block_d = min(block_d, FP64_BLOCK_D)
        for layout in layouts:
            if layout.groups > 1:
                while layout.group_size % block_d:
                    block_d //= 2
        return cls(batch, channels, length, state, chunk, -(-length // chunk), block_d,
                   -(-channels // block_d), 1 << (state - 1).bit_length(), compute)

    def chunk_grid(self) -> Tuple[int, int, int]:
        """One program per (channel block, chunk, batch element)."""
        return self.num_blocks, self.num_chunks, self.batch

    def carry_grid(self) -> Tuple[int, int]:
        """One program per (channel block, batch element)."""
        return self.num_blocks, self.batch

    def blocking(self, kernels: ModuleType) -> dict:
        """The compile-time sizes every chunk kernel takes."""
        return dict(CHUNK=self.chunk, BLOCK_D=self.block_d, BLOCK_N=self.block_n,
                    COMPUTE=kernels.COMPUTE_DTYPES[self.compute],
                    num_warps=NUM_WARPS)

    def matrix_grad_buffer(self, layout: _Layout, like: Tensor) -> Tensor:
        """Partial sums of the gradient of B or C: ``(b, num_blocks, N, L)`` variable,
        ``(b, K, D, N)`` shared (see ``_store_matrix_grad``)."""
        shape = ((self.batch, self.num_blocks, self.state, self.length) if layout.var else
                 (self.batch, self.num_chunks, self.channels, self.state))
        return like.new_empty(shape, dtype=self.compute)

    def reduce_matrix_grad(self, partial: Tensor, layout: _Layout,
                           shape: torch.Size) -> Tensor:
        """The gradient of B or C in the shape it was given: the channel blocks of each
        group summed, or the batch and chunks."""
        if not layout.var:
            return partial.sum((0, 1))
        return partial.view(self.batch, layout.groups, self.num_blocks // layout.groups,
                            self.state, self.length).sum(2).reshape(shape)


class _TritonScan(torch.autograd.Function):
    """The whole scan (bias, softplus, D, z included) in Triton kernels; returns ``y`` and
    the last state ``(b, D, N)``, both differentiable."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                delta_softplus: bool, chunk: int, block_d: int) -> Tuple[Tensor, Tensor]:
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        D, z, delta_bias = (None if t is None else t.contiguous() for t in (D, z, delta_bias))
        (B_data, B_lay), (C_data, C_lay) = (_kernel_matrix(M, u.shape[1]) for M in (B, C))
        tiling = _Tiling.of(u, A, (B_lay, C_lay), chunk, block_d)
        kernels = _kernels()
        blocking = tiling.blocking(kernels)
        flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
        absent = u  # stands for a missing optional input; never read
        bias = absent if delta_bias is None else delta_bias
        b, channels, length, state, K = (tiling.batch, tiling.channels, tiling.length,
                                         tiling.state, tiling.num_chunks)

        ends = u.new_empty((b, channels, K, state), dtype=tiling.compute)
        sums = u.new_empty((b, channels, K), dtype=tiling.compute)
        kernels.chunk_end_states_kernel[tiling.chunk_grid()](
            delta, bias, u, A, B_data, ends, sums, channels, length, state, K, B_lay.groups,
            B_lay.group_size, B_VAR=B_lay.var, **flags, **blocking)
        starts = torch.empty_like(ends)
        last = u.new_empty((b, channels, state), dtype=tiling.compute)
        kernels.carry_kernel[tiling.carry_grid()](
            sums, ends, A, absent, starts, last, channels, state, K, HAS_INIT=False,
            STORE_LAST=True, REVERSE=False, BLOCK_D=tiling.block_d, BLOCK_N=tiling.block_n,
            COMPUTE=blocking['COMPUTE'], num_warps=NUM_WARPS)
        y = torch.empty_like(u)
        kernels.chunk_scan_forward_kernel[tiling.chunk_grid()](
            delta, bias, u, A, B_data, C_data, absent if D is None else D,
            absent if z is None else z, starts, y, channels, length, state, K, B_lay.groups,
            B_lay.group_size, C_lay.groups, C_lay.group_size, B_VAR=B_lay.var,
            C_VAR=C_lay.var, HAS_D=D is not None, HAS_Z=z is not None, **flags, **blocking)

        ctx.save_for_backward(u, delta, A, B_data, C_data, D, z, delta_bias, starts, sums)
        ctx.layouts = (B_lay, C_lay)
        ctx.matrix_shapes = (B.shape, C.shape)
        ctx.tiling = tiling
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Optional[Tensor], grad_last: Optional[Tensor]):
        u, delta, A, B_data, C_data, D, z, delta_bias, starts, sums = ctx.saved_tensors
        B_lay, C_lay = ctx.layouts
        tiling: _Tiling = ctx.tiling
        kernels = _kernels()
        blocking = tiling.blocking(kernels)
        flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus,
                     HAS_Z=z is not None)
        absent = u  # stands for a missing optional input or output; never touched
        bias = absent if delta_bias is None else delta_bias
        gate = absent if z is None else z
        b, channels, length, state, K = (tiling.batch, tiling.channels, tiling.length,
                                         tiling.state, tiling.num_chunks)
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.contiguous()

        parts = starts.new_empty(starts.shape)
        kernels.chunk_adjoint_parts_kernel[tiling.chunk_grid()](
            delta, bias, gate, grad_y, A, C_data, parts, channels, length, state, K,
            C_lay.groups, C_lay.group_size, C_VAR=C_lay.var, **flags, **blocking)
        adjoints = torch.empty_like(parts)
        kernels.carry_kernel[tiling.carry_grid()](
            sums, parts, A, absent if grad_last is None else grad_last.contiguous(), adjoints,
            absent, channels, state, K, HAS_INIT=grad_last is not None, STORE_LAST=False,
            REVERSE=True, BLOCK_D=tiling.block_d, BLOCK_N=tiling.block_n,
            COMPUTE=blocking['COMPUTE'], num_warps=NUM_WARPS)

        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_z = None if z is None else torch.empty_like(z)
        grad_A = starts.new_empty((b, K, channels, state))
        grad_B = tiling.matrix_grad_buffer(B_lay, u)
        grad_C = tiling.matrix_grad_buffer(C_lay, u)
        grad_D, grad_bias = (None if t is None else starts.new_empty((b, K, channels))
                             for t in (D, delta_bias))
        kernels.chunk_scan_backward_kernel[tiling.chunk_grid()](
            delta, bias, u, A, B_data, C_data, absent if D is None else D, gate, grad_y, starts,
            adjoints, grad_u, grad_delta, absent if grad_z is None else grad_z, grad_A, grad_B,
            grad_C, absent if grad_D is None else grad_D,
            absent if grad_bias is None else grad_bias, channels, length, state, K,
            tiling.num_blocks, B_lay.groups, B_lay.group_size, C_lay.groups, C_lay.group_size,
            B_VAR=B_lay.var, C_VAR=C_lay.var, HAS_D=D is not None, **flags, **blocking,
            **_options('chunk_scan_backward_kernel', tiling.compute))

        B_shape, C_shape = ctx.matrix_shapes
        grad_B = tiling.reduce_matrix_grad(grad_B, B_lay, B_shape).to(B_data.dtype)
        grad_C = tiling.reduce_matrix_grad(grad_C, C_lay, C_shape).to(C_data.dtype)
        grad_A = grad_A.sum((0, 1)).to(A.dtype)
        grad_D = None if D is None else grad_D.sum((0, 1)).to(D.dtype)
        grad_bias = None if delta_bias is None else grad_bias.sum((0, 1)).to(delta_bias.dtype)
        return (grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias, None,
                None, None)


def _options(kernel: str, compute: torch.dtype) -> dict:
    """Compile options of ``kernel`` beyond ``num_warps``: its register limit, if it has
    one (none under the interpreter)."""
    limit = REGISTER_LIMITS.get((kernel, compute))
    return {} if limit is None or _interpreting() else dict(maxnreg=limit)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor], z: Optional[Tensor],
                           delta_bias: Optional[Tensor], delta_softplus: bool,
                           return_last_state: bool, chunk: int, block_d: int) -> ScanOutput:
    """:func:`selective_scan_triton` with the chunk length and the channel block given
    (powers of two); tests use small chunks to cross many chunk boundaries cheaply."""
    check_inputs(u, delta, A, B, C)
    _check_optional(u, D, z, delta_bias)
    if not (_is_power_of_two(chunk) and _is_power_of_two(block_d)):
        raise ValueError(f'chunk and block_d must be powers of two; got {chunk}, {block_d}.')
    if not triton_available():
        raise RuntimeError('the Triton selective scan needs Triton 3.4 or later, and CUDA or '
                           'TRITON_INTERPRET=1 (Triton\'s interpreter, which runs on CPU).')
    if not u.is_cuda and not _interpreting():
        raise ValueError(f'the Triton selective scan runs CUDA tensors (got {u.device}); '
                         'CPU tensors only under TRITON_INTERPRET=1.')
    y, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk,
                                block_d)
    return (y, last) if return_last_state else y


def selective_scan_triton(u: Tensor,
                          delta: Tensor,
                          A: Tensor,
                          B: Tensor,
                          C: Tensor,
                          D: Optional[Tensor] = None,
                          z: Optional[Tensor] = None,
                          delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False,
                          return_last_state: bool = False) -> ScanOutput:
    """The Triton selective scan. Arguments and results as
    :func:`~mmshufflemamba.ops.selective_scan.selective_scan`.

    Computed in float32 (float64 when u is float64); ``y`` has the dtype of ``u``, the last
    state (``(B, D, N)``, when asked for) the computation's dtype. Raises RuntimeError where
    Triton cannot run (see :func:`triton_available`).
    """
    return _selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, CHUNK, BLOCK_D)
