"""Vim's bidirectional mixer after ``in_proj``, fused on CPU.

``bimamba_inner(xz, ...)`` maps ``in_proj``'s output ``xz`` ``(B, L, 2 D)`` (x, then z) to the
combined scan output ``y`` ``(B, L, D)`` that ``out_proj`` reads, or, given ``out_proj``'s
weight, to ``out_proj(y)``:

* the compiled kernel runs both directions' causal depthwise convolutions with their SiLU
  (the backward one anti-causal in the original token order: nothing is flipped);
* torch runs the ``x_proj`` GEMM, token-major on contiguous data;
* the compiled kernel runs both directions' selective scans (the backward one from t = L-1
  down), with ``dt_proj`` applied per chunk to ``x_proj``'s output (no ``(B, L, D)`` step-size
  tensor is made), ``D``, the ``z`` gate and ``(y_f + y_b) / 2``.

The backward pass recomputes the convolutions, the step sizes and the scans' states (from
one checkpoint per ``chunk`` steps, the kernel module's constant, shared with the
one-direction scan: both run ``csrc/scan_core.h``) and writes the gradients of x and z
straight into one ``dxz``; with ``out_proj`` it also rebuilds ``y`` from the outputs it
recomputes, for ``out_proj``'s weight gradient, so ``y`` is never kept. Both passes are
``torch.library`` custom ops with fake implementations and an autograd formula, so
``torch.compile`` and ``torch.export`` (and FakeTensors, dispatch modes, torch.func,
tensor subclasses) see two opaque ops instead of breaking the graph; a plain eager call
runs the same two functions through an ``autograd.Function``, without the op's Python
dispatch, and with autograd off (``no_grad``, ``inference_mode``) the forward function
alone. Computed in float32 (float64 stays float64; bf16/fp16 inputs are computed in
float32). A bfloat16 ``xz`` (``in_proj``'s output under bf16 autocast) is read
by the kernels as it is, widened exactly as they load it: no float32 copy of it is made or
kept for the backward pass, and its gradient comes back in bfloat16.
"""
from contextlib import nullcontext
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.profiler import record_function

from .cpu_kernel import load_cpu_kernel, plain_eager_call

__all__ = ['bimamba_inner', 'fused_mixer_available', 'FUSED_STATE_SIZES']

FUSED_STATE_SIZES = (1, 4, 8, 16)  # the d_state values the kernel is compiled for


def fused_mixer_available(x: Tensor, d_state: int, dt_rank: int = 1) -> bool:
    """Whether :func:`bimamba_inner` can run for ``x`` here: CPU, the kernel built, a
    compiled d_state, dt_rank up to the kernel's ``max_dt_rank`` (256). (The mixer runs it
    only where its scan backend is ``compiled``.)"""
    return _fused_mixer_available(x.device.type, d_state, dt_rank)


@torch.compiler.assume_constant_result
def _fused_mixer_available(device: str, d_state: int, dt_rank: int) -> bool:
    kernel = load_cpu_kernel() if device == 'cpu' and d_state in FUSED_STATE_SIZES else None
    return kernel is not None and 1 <= dt_rank <= kernel.max_dt_rank


def _profiled(name: str):
    """A ``record_function`` range while torch.profiler records (so that it, and
    benchmarks/bench_backbone.py's breakdown, shows the convolutions and the scans apart from
    the GEMMs around them); otherwise nothing: a range costs about 7 us to open and close
    even with no profiler, five per mixer and train step."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


def _conv_forward(xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b):
    with _profiled('mmshufflemamba::conv'):
        return load_cpu_kernel().bimamba_conv_forward(xz, conv_w_f, conv_b_f, conv_w_b,
                                                      conv_b_b)


def _x_proj(u: Tensor, xproj_w: Tensor) -> Tensor:
    """x_dbl = u @ W_x^T ``(B, L, R + 2N)``: the step sizes' inputs, B and C."""
    B, L, D = u.shape
    # The transposed view, as nn.Linear passes it. (A contiguous copy of W_x^T ran in 0.76x
    # the time on the AVX-512 VM of 2026-12-01; on the AMX VM of 2026-12-06 the view took
    # 0.79x / 0.93x / 0.97x of copy + GEMM at L = 197 / 1025 / 4097, 61 alternated pairs.)
    return torch.mm(u.view(B * L, D), xproj_w.t()).view(B, L, xproj_w.shape[0])


def _inner_forward(xz: Tensor, conv_w_f: Tensor, conv_b_f: Tensor, conv_w_b: Tensor,
                   conv_b_b: Tensor, xproj_w_f: Tensor, xproj_w_b: Tensor, dtproj_w_f: Tensor,
                   dtproj_w_b: Tensor, dt_bias_f: Tensor, dt_bias_b: Tensor, A_f: Tensor,
                   A_b: Tensor, D_f: Tensor, D_b: Tensor, out_w: Optional[Tensor] = None,
                   out_b: Optional[Tensor] = None, recompute: bool = False
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``y`` (or ``out_proj(y)`` with ``out_w``) and, for the backward pass,
    ``x_dbl_f``, ``x_dbl_b`` and the checkpoints (kept for it unless ``recompute``)."""
    u_f, u_b = _conv_forward(xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b)
    y, x_dbl_f, x_dbl_b, ckpt_f, ckpt_b = _scans_forward(
        xz, u_f, u_b, xproj_w_f, xproj_w_b, dtproj_w_f, dtproj_w_b, dt_bias_f, dt_bias_b, A_f,
        A_b, D_f, D_b)
    if out_w is not None:
        y = _out_proj(y, out_w, out_b)
    return y, x_dbl_f, x_dbl_b, ckpt_f, ckpt_b


def _scans_forward(xz: Tensor, u_f: Tensor, u_b: Tensor, xproj_w_f: Tensor, xproj_w_b: Tensor,
                   dtproj_w_f: Tensor, dtproj_w_b: Tensor, dt_bias_f: Tensor,
                   dt_bias_b: Tensor, A_f: Tensor, A_b: Tensor, D_f: Tensor, D_b: Tensor
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """From the convolutions' outputs ``u``: x_proj, then both directions' scans; returns
    ``y`` ``(B, L, D)``, ``x_dbl_f``, ``x_dbl_b`` and the checkpoints."""
    x_dbl_f, x_dbl_b = _x_proj(u_f, xproj_w_f), _x_proj(u_b, xproj_w_b)
    with _profiled('mmshufflemamba::scan'):
        y, ckpt_f, ckpt_b = load_cpu_kernel().bimamba_scan_forward(
            xz, u_f, u_b, dtproj_w_f, dtproj_w_b, x_dbl_f, x_dbl_b, A_f, A_b, D_f, D_b,
            dt_bias_f, dt_bias_b)
    return y, x_dbl_f, x_dbl_b, ckpt_f, ckpt_b


def _out_proj(y: Tensor, out_w: Tensor, out_b: Optional[Tensor]) -> Tensor:
    """``out_proj`` in its weight's dtype (bf16 under autocast, as nn.Linear would run)."""
    return torch.nn.functional.linear(y.to(out_w.dtype), out_w, out_b)


_bimamba_inner = torch.library.custom_op('mmshufflemamba::bimamba_inner', _inner_forward,
                                         mutates_args=(), device_types='cpu')


@_bimamba_inner.register_fake
def _(xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b, xproj_w_f, xproj_w_b, dtproj_w_f,
      dtproj_w_b, dt_bias_f, dt_bias_b, A_f, A_b, D_f, D_b, out_w=None, out_b=None,
      recompute=False):
    B, L, D2 = xz.shape
    D, N = D2 // 2, A_f.shape[1]
    chunk = load_cpu_kernel().chunk  # steps per checkpoint, as the kernel was built
    chunks = (L + chunk - 1) // chunk
    x_dbl = A_f.new_empty(B, L, xproj_w_f.shape[0])  # everything computed has A's dtype
    y = A_f.new_empty(B, L, D) if out_w is None else out_w.new_empty(B, L, out_w.shape[0])
    return (y, x_dbl, torch.empty_like(x_dbl),
            A_f.new_empty(B, chunks, N, D), A_f.new_empty(B, chunks, N, D))


def _inner_backward(dy: Tensor, xz: Tensor, conv_w_f: Tensor, conv_b_f: Tensor,
                    conv_w_b: Tensor, conv_b_b: Tensor, xproj_w_f: Tensor,
                    xproj_w_b: Tensor, dtproj_w_f: Tensor, dtproj_w_b: Tensor,
                    dt_bias_f: Tensor, dt_bias_b: Tensor, A_f: Tensor, A_b: Tensor,
                    D_f: Tensor, D_b: Tensor, out_w: Optional[Tensor], out_b: Optional[Tensor],
                    x_dbl_f: Optional[Tensor], x_dbl_b: Optional[Tensor],
                    ckpt_f: Optional[Tensor], ckpt_b: Optional[Tensor]) -> List[Tensor]:
    """Gradients of ``xz`` (in its dtype) and of the 16 weights, in :func:`_inner_forward`'s
    order; an empty tensor for ``out_w`` and ``out_b`` when absent. With ``out_w``, ``dy``
    is the gradient of ``out_proj(y)``, and ``y``, which out_proj's weight gradient needs,
    is rebuilt by the scan backward instead of kept. Without ``x_dbl_*`` and the checkpoints
    (``recompute``), the forward pass's x_proj GEMMs and scans run again first."""
    kernel = load_cpu_kernel()
    B, L, D2 = xz.shape
    D, rank = D2 // 2, dtproj_w_f.shape[1]
    dout = None
    if out_w is not None:
        dout = dy
        dy = torch.matmul(dout, out_w).to(A_f.dtype)  # dL/dy, in out_proj's dtype first
    u_f, u_b = _conv_forward(xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b)  # recomputed
    dout_w, dout_b = xz.new_empty(0), xz.new_empty(0)  # two: the op's outputs may not alias
    rebuilt_y = None  # the scan backward's buffer for y, where out_proj needs it
    if ckpt_f is None:  # recompute: the forward's x_dbl, checkpoints (and y) made again
        y, x_dbl_f, x_dbl_b, ckpt_f, ckpt_b = _scans_forward(
            xz, u_f, u_b, xproj_w_f, xproj_w_b, dtproj_w_f, dtproj_w_b, dt_bias_f, dt_bias_b,
            A_f, A_b, D_f, D_b)
        if out_w is not None:  # done with y before the scan backward's outputs exist
            dout_w, dout_b = _out_proj_grads(dout, y, out_b is not None)
        del y
    elif out_w is not None:
        rebuilt_y = A_f.new_empty(B, L, D)
    dxz = torch.empty(xz.shape, dtype=A_f.dtype)  # both directions add into it: full precision
    with _profiled('mmshufflemamba::scan_backward'):
        (du_f, ddelta_f, dBC_f, dA_f, dD_f, dbias_f, du_b, ddelta_b, dBC_b, dA_b, dD_b,
         dbias_b) = kernel.bimamba_scan_backward(
            dy.contiguous(), xz, u_f, u_b, dtproj_w_f, dtproj_w_b, x_dbl_f, x_dbl_b, A_f, A_b,
            D_f, D_b, dt_bias_f, dt_bias_b, ckpt_f, ckpt_b, dxz, rebuilt_y)
    del dy, ckpt_f, ckpt_b
    if rebuilt_y is not None:
        dout_w, dout_b = _out_proj_grads(dout, rebuilt_y, out_b is not None)
    grads = {}
    for s, u, x_dbl, ddelta, dBC, xproj_w, dtproj_w in (
            ('f', u_f, x_dbl_f, ddelta_f, dBC_f, xproj_w_f, dtproj_w_f),
            ('b', u_b, x_dbl_b, ddelta_b, dBC_b, xproj_w_b, dtproj_w_b)):
        ddelta = ddelta.view(B * L, D)
        x_dbl = x_dbl.view(B * L, x_dbl.shape[-1])
        dx_dbl = torch.cat([torch.mm(ddelta, dtproj_w), dBC.view(B * L, dBC.shape[-1])], dim=1)
        grads[f'dtproj_w_{s}'] = torch.mm(ddelta.t(), x_dbl[:, :rank])
        grads[f'xproj_w_{s}'] = torch.mm(dx_dbl.t(), u.view(B * L, D))
        (du_f if s == 'f' else du_b).view(B * L, D).addmm_(dx_dbl, xproj_w)
    with _profiled('mmshufflemamba::conv_backward'):
        dconv_w_f, dconv_b_f, dconv_w_b, dconv_b_b = kernel.bimamba_conv_backward(
            xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b, du_f, du_b, dxz)
    return [dxz.to(xz.dtype), dconv_w_f, dconv_b_f, dconv_w_b, dconv_b_b, grads['xproj_w_f'],
            grads['xproj_w_b'], grads['dtproj_w_f'], grads['dtproj_w_b'], dbias_f, dbias_b,
            dA_f, dA_b, dD_f, dD_b, dout_w, dout_b]


def _out_proj_grads(dout: Tensor, y: Tensor, bias: bool) -> Tuple[Tensor, Tensor]:
    """out_proj's weight and bias gradients from ``dout`` ``(B, L, C)`` and its input ``y``
    ``(B, L, D)`` (an empty tensor for an absent bias)."""
    dout = dout.reshape(-1, dout.shape[-1])
    weight = torch.mm(dout.t(), y.view(dout.shape[0], y.shape[-1]).to(dout.dtype))
    return weight, dout.sum(0) if bias else dout.new_empty(0)


_bimamba_inner_backward = torch.library.custom_op(
    'mmshufflemamba::bimamba_inner_backward', _inner_backward, mutates_args=(),
    device_types='cpu')


@_bimamba_inner_backward.register_fake
def _(dy, xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b, xproj_w_f, xproj_w_b, dtproj_w_f,
      dtproj_w_b, dt_bias_f, dt_bias_b, A_f, A_b, D_f, D_b, out_w, out_b, x_dbl_f, x_dbl_b,
      ckpt_f, ckpt_b):
    weights = (conv_w_f, conv_b_f, conv_w_b, conv_b_b, xproj_w_f, xproj_w_b, dtproj_w_f,
               dtproj_w_b, dt_bias_f, dt_bias_b, A_f, A_b, D_f, D_b, out_w, out_b)
    return [torch.empty_like(xz)] + [xz.new_empty(0) if w is None else torch.empty_like(w)
                                     for w in weights]


def _setup_context(ctx, inputs, output):
    *tensors, recompute = inputs
    y, *state = output  # x_dbl_f, x_dbl_b, ckpt_f, ckpt_b
    ctx.recompute = recompute
    ctx.save_for_backward(*tensors, *([] if recompute else state))
    ctx.mark_non_differentiable(*state)
    # The saved outputs get no gradient: without this autograd zero-fills one of each
    # shape for the backward pass (at 512 px, 11 ms of a train step went to those fills).
    ctx.set_materialize_grads(False)


def _backward_by(run_backward):
    """The autograd formula, running the backward pass as ``run_backward``."""

    def backward(ctx, dy, *unused):
        saved = ctx.saved_tensors  # once: activation checkpointing unpacks each save once
        inputs, state = (saved, [None] * 4) if ctx.recompute else (saved[:-4], saved[-4:])
        if dy is None:  # no gradient reached y (grads are not materialized): none for the inputs
            return (None, ) * (len(inputs) + 1)
        grads = run_backward(dy, *inputs, *state)
        # none for out_w, out_b where absent, and for the recompute flag
        return tuple(None if x is None else g for x, g in zip(inputs, grads)) + (None, )

    return backward


_bimamba_inner.register_autograd(
    _backward_by(torch.ops.mmshufflemamba.bimamba_inner_backward), setup_context=_setup_context)


class _EagerInner(torch.autograd.Function):
    """The custom op's forward, saved tensors and backward, without the dispatcher: in a
    plain eager call the op's Python dispatch and its generated autograd wrapper cost about
    160 us per mixer and train step (measured at a size where the kernels take 35 us).
    Differentiable once, as the op (a second derivative raises). The forward takes ``ctx``
    itself: with a separate ``setup_context``, ``Function.apply`` binds the arguments to
    the forward's signature (``inspect.signature``) on every call, 90 us per mixer here."""

    @staticmethod
    def forward(ctx, *inputs):  # all 18 of the op's inputs, recompute last (no defaults here)
        output = _inner_forward(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(torch.autograd.function.once_differentiable(
        _backward_by(_inner_backward)))


def bimamba_inner(xz: Tensor, conv_w_f: Tensor, conv_b_f: Optional[Tensor], conv_w_b: Tensor,
                  conv_b_b: Optional[Tensor], xproj_w_f: Tensor, xproj_w_b: Tensor,
                  dtproj_w_f: Tensor, dtproj_w_b: Tensor, dt_bias_f: Tensor, dt_bias_b: Tensor,
                  A_f: Tensor, A_b: Tensor, D_f: Tensor, D_b: Tensor,
                  out_proj_w: Optional[Tensor] = None,
                  out_proj_b: Optional[Tensor] = None, recompute: bool = False) -> Tensor:
    """The fused mixer: ``xz`` ``(B, L, 2 D)`` -> ``y`` ``(B, L, D)``, both directions, or,
    given ``out_proj``'s weight ``(C, D)`` (and bias), ``out_proj(y)`` ``(B, L, C)``.

    Weights in the mixer's own shapes (conv ``(D, 1, K)``, x_proj ``(R + 2N, D)``, dt_proj
    ``(D, R)``, A ``(D, N)`` already ``-exp(A_log)``). Differentiable in every input.
    Computed in float32 (float64 for float64 ``xz``); a bfloat16 ``xz`` is read without a
    copy, other half types are copied to float32. ``y`` has ``xz``'s dtype; ``out_proj`` runs
    in its weight's dtype, or in the autocast dtype where CPU autocast is on (as
    ``nn.Linear`` would). With ``out_proj``, ``y`` is not kept for the backward pass: the
    scan backward rebuilds it for out_proj's weight gradient (``D`` floats per token less).
    ``recompute``: keep only the inputs for the backward pass, which runs the x_proj GEMMs
    and the scans' forward again for ``x_dbl`` and the checkpoints (``2 (R + 2N) + 2 N D /
    32`` floats per token less: 880 for ShuffleMamba-S); the same gradients, bit for bit.
    """
    if out_proj_w is None and out_proj_b is not None:
        raise ValueError('bimamba_inner: out_proj_b needs out_proj_w.')
    compute = torch.float64 if xz.dtype == torch.float64 else torch.float32
    if conv_b_f is None:
        conv_b_f = conv_w_f.new_zeros(conv_w_f.shape[0])
    if conv_b_b is None:
        conv_b_b = conv_w_b.new_zeros(conv_w_b.shape[0])
    weights = [conv_w_f, conv_b_f, conv_w_b, conv_b_b, xproj_w_f, xproj_w_b, dtproj_w_f,
               dtproj_w_b, dt_bias_f, dt_bias_b, A_f, A_b, D_f, D_b]
    weights = [w.to(compute) if w.dtype != compute else w for w in weights]
    out_proj = [out_proj_w, out_proj_b]
    autocast = torch.is_autocast_enabled('cpu')
    if autocast:  # as nn.Linear runs under autocast
        out_proj = [w if w is None else w.to(torch.get_autocast_dtype('cpu')) for w in out_proj]
    # the kernels read xz in the compute dtype or in bfloat16
    xz_in = xz if xz.dtype in (compute, torch.bfloat16) else xz.to(compute)
    given = [w for w in out_proj if w is not None]
    plain = plain_eager_call(xz_in, *weights, *given)
    if not plain:
        op = torch.ops.mmshufflemamba.bimamba_inner  # tracers, dispatch modes, subclasses
    elif torch.is_grad_enabled():
        op = _EagerInner.apply
    else:  # nothing to record for a backward pass (eval under no_grad / inference_mode)
        op = _inner_forward
    # (torch.export records even a disabled autocast around the op: a program exported
    # without autocast keeps it off inside the op when run under autocast later)
    with torch.autocast('cpu', enabled=False) if autocast or not plain else nullcontext():
        y = op(xz_in, *weights, *out_proj, recompute)[0]
    return y if out_proj_w is not None else y.to(xz.dtype)
