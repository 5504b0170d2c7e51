"""The compiled CPU selective scan: the whole scan (bias, softplus, ``D``, ``z``) in this
package's C++ kernel (:mod:`.cpu_kernel` builds and loads it), forward and a backward that
recomputes the states chunk by chunk from checkpoints (``L / chunk`` states per row are
stored instead of ``L``; ``chunk`` is the kernel module's constant). The scan itself is
``csrc/scan_core.h``, the same as the fused mixer's (:mod:`.bimamba`). CPU tensors only;
it does not return the last state.
"""
from typing import Optional

import torch
from torch import Tensor

from .cpu_kernel import load_cpu_kernel
from .scan_contract import ScanCall, ScanOutput, check_inputs, compute_dtype

__all__ = ['selective_scan_cpu', 'why_not']


def why_not(call: ScanCall) -> Optional[str]:
    """Why the compiled kernel cannot run ``call``, or None when it can (builds the kernel
    on first use)."""
    if call.device != 'cpu':
        return f'the compiled kernel runs CPU tensors, not {call.device}'
    if call.return_last_state:
        return 'the compiled kernel does not return the last state'
    if load_cpu_kernel() is None:
        return 'the compiled CPU kernel could not be built (see the warning above)'
    return None


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
    check_inputs(u, delta, A, B, C)
    if return_last_state:
        raise NotImplementedError(
            'return_last_state is supported by the CUDA kernel and by '
            'selective_scan_reference only; the CPU paths do not return it.')
    if u.device.type != 'cpu':
        raise ValueError(f'selective_scan_cpu takes CPU tensors; got {u.device}.')
    if load_cpu_kernel() is None:
        raise RuntimeError('the compiled CPU selective scan is not available here; use '
                           'selective_scan (which falls back) or selective_scan_torch.')
    compute = compute_dtype(u.dtype)

    def prepare(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(compute).contiguous()

    with torch.autocast(device_type='cpu', enabled=False):
        y = _CompiledScan.apply(*map(prepare, (u, delta, A, B, C, D, z, delta_bias)),
                                delta_softplus)
    return y.to(u.dtype)
