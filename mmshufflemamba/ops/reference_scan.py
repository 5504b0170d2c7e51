"""The selective scan as a definition: the textbook reference and the exportable scan.

:func:`selective_scan_reference` is the plain sequential definition (the textbook loop that
indexes full tensors at every step). It is slow, quadratic in ``L`` in the backward pass,
and exists only to check the fast paths against and to benchmark them; it is no backend.

:func:`selective_scan_exportable` is the backend ``'exportable'``: the recurrence written
with ``torch.ops.higher_order.scan``, which the ONNX exporter
(``torch.onnx.export(dynamo=True)``) turns into an ONNX loop over any sequence length. It is
never chosen automatically; a mixer runs it when its ``scan_backend`` says so (see
:func:`mmshufflemamba.models.layers.use_scan_backend`).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_contract import ScanCall, ScanOutput, check_inputs, skip_and_gate, step_sizes

__all__ = ['selective_scan_exportable', 'selective_scan_reference', 'why_not']


def why_not(call: ScanCall) -> Optional[str]:
    """The exportable scan runs every call (any device and dtype, the last state too)."""
    return None


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
    check_inputs(u, delta, A, B, C)
    dtype_in = u.dtype
    compute, u, delta, A = step_sizes(u, delta, A, delta_bias, delta_softplus)
    channels = u.shape[1]

    def per_step(M: Tensor) -> Tensor:  # -> (L, b, D, N), or (D, N) when shared
        if M.dim() == 2:
            return M.to(compute)
        if M.dim() == 3:
            M = M.unsqueeze(1)
        M = M.to(compute).repeat_interleave(channels // M.shape[1], dim=1)
        return M.permute(3, 0, 1, 2)

    B_t, C_t = per_step(B), per_step(C)
    # contiguous, as the carry a * h + x is: scan wants the initial state's strides to be
    # the carry's, and a transposed A or B would otherwise pass its strides on
    decay = torch.exp(delta.permute(2, 0, 1).unsqueeze(-1) * A).contiguous()  # (L, b, D, N)
    drive = ((delta * u).permute(2, 0, 1).unsqueeze(-1) * B_t).contiguous()  # (L, b, D, N)
    readout = C_t.expand_as(decay)

    def step(h, xs):
        a, x, c = xs
        h = a * h + x
        return h, (h * c).sum(-1)

    last, ys = scan(step, decay.new_zeros(decay.shape[1:]), (decay, drive, readout))
    y = skip_and_gate(ys.permute(1, 2, 0), u, D, z).to(dtype_in)  # (b, D, L)
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
    check_inputs(u, delta, A, B, C)
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
