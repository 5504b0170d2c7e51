"""The PyTorch selective scan: any device, one autograd function.

The only sequential part is one fused multiply-add per step on contiguous time-major
slices, forward and backward (the adjoint recurrence, written by hand). It does not return
the last state.
"""
from typing import Optional

import torch
from torch import Tensor

from .scan_contract import ScanCall, ScanOutput, check_inputs, skip_and_gate, step_sizes

__all__ = ['selective_scan_torch', 'why_not']


def why_not(call: ScanCall) -> Optional[str]:
    """Why the PyTorch scan cannot run ``call``, or None when it can (any device, dtype)."""
    if call.return_last_state:
        return 'the PyTorch scan does not return the last state'
    return None


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
        else:  # (b, G, N, L); shapes were checked by check_inputs
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
    check_inputs(u, delta, A, B, C)
    if return_last_state:
        raise NotImplementedError(
            'return_last_state is supported by the CUDA kernel and by '
            'selective_scan_reference only; the PyTorch path does not return it.')
    dtype_in = u.dtype
    compute, u, delta, A = step_sizes(u, delta, A, delta_bias, delta_softplus)
    channels = u.shape[1]
    B_mat = _InputMatrix(B.to(compute), channels)
    C_mat = _InputMatrix(C.to(compute), channels)
    delta_t = delta.permute(2, 0, 1).contiguous()  # (L, b, D)
    u_t = u.permute(2, 0, 1).contiguous()
    y = _SelectiveScanCore.apply(delta_t, u_t, A, B_mat, C_mat, B_mat.data,
                                 C_mat.data).permute(1, 2, 0)  # (b, D, L)
    return skip_and_gate(y, u, D, z).to(dtype_in)
