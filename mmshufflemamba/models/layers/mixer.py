"""The bidirectional Mamba mixer of Vision Mamba ("bimamba v2")."""
import contextlib
import math
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from mmshufflemamba.ops import BACKENDS, causal_conv1d, choose_backend, selective_scan
from mmshufflemamba.ops.bimamba import bimamba_inner, fused_mixer_available
from mmshufflemamba.ops.cpu_kernel import plain_eager_call
from ..utils.precision import at_least_float32

__all__ = ['BiMambaMixer', 'use_scan_backend']


class BiMambaMixer(nn.Module):
    """Bidirectional Mamba: one shared input/output projection, two scan branches.

    The forward branch runs ``conv1d -> x_proj -> dt_proj -> selective scan`` over the
    sequence; the backward branch has its own ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``,
    ``A_b_log`` and ``D_b`` and runs over the reversed sequence. The output is
    ``out_proj((y_fwd + flip(y_bwd)) / 2)``. Parameter names follow the reference layout
    (``mamba_ssm`` / Vim) so that published weights load.

    Two ways to compute it, the same function:

    * on CPU, where the compiled kernel is available and the scan backend is ``compiled``
      (the default there), :func:`~mmshufflemamba.ops.bimamba.bimamba_inner` runs
      everything after ``in_proj`` fused, token-major, nothing flipped (``out_proj`` in it,
      so that its input is rebuilt in the backward pass instead of kept);
    * elsewhere, the two branches run channel-major through
      :func:`~mmshufflemamba.ops.selective_scan` (mamba_ssm, Triton or PyTorch on CUDA;
      the PyTorch scan on CPU with ``MMSHUFFLEMAMBA_SCAN_BACKEND=torch``).

    The scan backend is chosen once per forward (:func:`~mmshufflemamba.ops.choose_backend`),
    which also refuses TorchScript tracing.

    Attributes:
        scan_backend: None (default) lets ``MMSHUFFLEMAMBA_SCAN_BACKEND`` or the automatic
            choice decide; a key of :data:`mmshufflemamba.ops.BACKENDS` runs that backend,
            e.g. ``'exportable'`` for ONNX export, ``'stand_in'`` for FLOP tracing (see
            :func:`use_scan_backend`).
        use_fast_path: Run the fused CPU op where the backend is ``compiled``; False runs
            the two directions unfused through the compiled scan instead.
        recompute_xz: The ``recompute_xz`` argument, settable later.

    Args:
        embed_dims: Model width ``d_model``.
        d_state: SSM state size ``N``.
        d_conv: Causal conv kernel size.
        expand: ``d_inner = expand * embed_dims``.
        dt_rank: Rank of the step-size projection; ``'auto'`` = ``ceil(embed_dims / 16)``.
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        dt_init_floor: Lower clamp of the initial step size.
        conv_bias: Bias in the causal convs.
        bias: Bias in ``in_proj``/``out_proj``.
        recompute_xz: On the fused CPU path, let go of ``in_proj``'s output ``xz`` after the
            forward pass and compute it again from ``in_proj``'s input (kept for its weight
            gradient anyway) when the backward pass needs it: ``2 d_inner`` floats per token
            less kept for training (1536 for ShuffleMamba-S, about half of what a block
            keeps), for one more ``in_proj`` GEMM per block in the backward pass. The
            gradients are the same, bit for bit. xz is kept as usual off the fused path,
            under ``with_cp`` or other saved-tensor hooks (those decide what is kept),
            under tracers, and where in_proj is not a plain hook-free nn.Linear.
    """

    def __init__(self,
                 embed_dims: int,
                 d_state: int = 16,
                 d_conv: int = 4,
                 expand: int = 2,
                 dt_rank='auto',
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4,
                 conv_bias: bool = True,
                 bias: bool = False,
                 recompute_xz: bool = False):
        super().__init__()
        self.embed_dims = embed_dims
        self.d_state = d_state
        self.d_inner = expand * embed_dims
        self.dt_rank = math.ceil(embed_dims / 16) if dt_rank == 'auto' else int(dt_rank)
        d_inner = self.d_inner

        self.in_proj = nn.Linear(embed_dims, 2 * d_inner, bias=bias)
        for suffix in ('', '_b'):
            conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1,
                             bias=conv_bias)
            x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            self._init_dt_proj(dt_proj, dt_min, dt_max, dt_init_floor)
            # A = -exp(A_log) with A_log = log(1..N) per channel (S4D-real init); D = 1.
            A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
                d_inner, 1)
            A_log = nn.Parameter(A_log)
            D = nn.Parameter(torch.ones(d_inner))
            A_log._no_weight_decay = True
            D._no_weight_decay = True
            setattr(self, f'conv1d{suffix}', conv)
            setattr(self, f'x_proj{suffix}', x_proj)
            setattr(self, f'dt_proj{suffix}', dt_proj)
            setattr(self, 'A_log' if not suffix else 'A_b_log', A_log)
            setattr(self, f'D{suffix}', D)
        self.out_proj = nn.Linear(d_inner, embed_dims, bias=bias)
        self.scan_backend: Optional[str] = None
        self.use_fast_path = True
        self.recompute_xz = recompute_xz

    def _init_dt_proj(self, dt_proj: nn.Linear, dt_min: float, dt_max: float,
                      dt_init_floor: float) -> None:
        """Weight ~ U(+-dt_rank^-0.5); bias = softplus^-1(dt), dt log-uniform in range."""
        std = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True

    def _branch(self, x: Tensor, z: Tensor, conv: nn.Conv1d, x_proj: nn.Linear,
                dt_proj: nn.Linear, A_log: Tensor, D: Tensor, backend: str) -> Tensor:
        """One scan direction, unfused. ``x``, ``z``: ``(B, d_inner, L)`` -> same."""
        x = causal_conv1d(x, conv.weight, conv.bias, activation='silu')
        x_dbl = torch.matmul(x_proj.weight, x)  # (B, dt_rank + 2N, L)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = torch.matmul(dt_proj.weight, dt)  # (B, d_inner, L); bias added in the scan
        A = -torch.exp(at_least_float32(A_log))  # (d_inner, N), fp32 (or fp64)
        return selective_scan(x, dt, A, B, C, at_least_float32(D), z=z,
                              delta_bias=at_least_float32(dt_proj.bias), delta_softplus=True,
                              backend=backend)

    def _runs_fused(self, x: Tensor, backend: str) -> bool:
        return self.use_fast_path and backend == 'compiled' and \
            fused_mixer_available(x, self.d_state, self.dt_rank)

    def fused(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes the fused CPU path for inputs like ``x``."""
        return self._runs_fused(x, choose_backend(x, requested=self.scan_backend))

    def _in_proj_again(self, hidden: Tensor, weight: Tensor,
                       bias: Optional[Tensor]) -> Callable[[], Tensor]:
        """``in_proj(hidden)`` as this forward pass computes it: these tensors, this
        autocast state."""
        autocast = torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu')

        def again() -> Tensor:
            with torch.no_grad(), torch.autocast('cpu', enabled=autocast[0],
                                                 dtype=autocast[1]):
                return nn.functional.linear(hidden, weight, bias)

        return again

    def _can_recompute_xz(self, hidden: Tensor, xz: Tensor) -> bool:
        """xz is plain ``F.linear(hidden, in_proj.weight, in_proj.bias)``: an nn.Linear
        without hooks that could change its output, untouched since, on a contiguous input
        (the GEMM path, so the bits, do not depend on ``requires_grad`` then), in plain
        eager autograd."""
        in_proj = self.in_proj
        return (self.recompute_xz and torch.is_grad_enabled() and type(in_proj) is nn.Linear
                and not (in_proj._forward_hooks or in_proj._forward_pre_hooks
                         or nn.modules.module._global_forward_hooks
                         or nn.modules.module._global_forward_pre_hooks)
                and xz._version == 0 and hidden.is_contiguous()
                and plain_eager_call(hidden, xz))

    def forward(self, hidden: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        xz = self.in_proj(hidden)  # (B, L, 2 d_inner): one GEMM on contiguous tokens
        backend = choose_backend(xz, requested=self.scan_backend)  # once per forward
        if self._runs_fused(xz, backend):
            keep_xz = contextlib.nullcontext()
            if self._can_recompute_xz(hidden, xz):
                weight, bias = self.in_proj.weight, self.in_proj.bias
                keep_xz = _remade_when_unpacked(
                    xz, self._in_proj_again(hidden, weight, bias),
                    [t for t in (hidden, weight, bias) if t is not None])
            with keep_xz:
                # out_proj inside: its input y is rebuilt in the backward pass, not kept
                return bimamba_inner(
                    xz, self.conv1d.weight, self.conv1d.bias, self.conv1d_b.weight,
                    self.conv1d_b.bias, self.x_proj.weight, self.x_proj_b.weight,
                    self.dt_proj.weight, self.dt_proj_b.weight, self.dt_proj.bias,
                    self.dt_proj_b.bias, -torch.exp(at_least_float32(self.A_log)),
                    -torch.exp(at_least_float32(self.A_b_log)), at_least_float32(self.D),
                    at_least_float32(self.D_b), self.out_proj.weight, self.out_proj.bias)
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) views
        y_fwd = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log,
                             self.D, backend)
        y_bwd = self._branch(x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b,
                             self.dt_proj_b, self.A_b_log, self.D_b, backend)
        y = (y_fwd + y_bwd.flip(-1)) / 2
        return self.out_proj(y.transpose(1, 2))


class _Remade:
    """What autograd keeps of xz under :func:`_remade_when_unpacked`: its shape."""
    __slots__ = ('shape', )

    def __init__(self, shape: torch.Size):
        self.shape = shape


@contextlib.contextmanager
def _remade_when_unpacked(target: Tensor, remake: Callable[[], Tensor],
                          inputs: Sequence[Tensor]) -> Iterator[None]:
    """Within this context, autograd saves ``target`` (xz, or a view of all of it) as a recipe:
    ``remake()`` makes it again when the backward pass unpacks it, so it is freed after the
    forward pass. Every other saved tensor is kept as usual. ``inputs`` (what ``remake``
    reads) may not change in place before then, as autograd requires of saved tensors.
    Does nothing under other saved-tensor hooks (activation checkpointing, offloading):
    theirs decide what is kept."""
    top_hooks = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
    if top_hooks is None or top_hooks(False) is not None:  # (None: cannot tell, keep xz)
        yield
        return
    ptr, dtype, numel = target.data_ptr(), target.dtype, target.numel()
    versions = [t._version for t in inputs]

    def pack(t: Tensor):
        if t.data_ptr() == ptr and t.dtype == dtype and t.numel() == numel and \
                t.is_contiguous():
            return _Remade(t.shape)
        return t

    def unpack(saved):
        if not isinstance(saved, _Remade):
            return saved
        if [t._version for t in inputs] != versions:
            raise RuntimeError(
                'a tensor the backward pass recomputes (recompute_xz: in_proj\'s output) '
                'cannot be: in_proj\'s input or weights were modified in place after the '
                'forward pass. Modify copies, or set recompute_xz=False.')
        return remake().view(saved.shape)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


@contextlib.contextmanager
def use_scan_backend(model: nn.Module, backend: Optional[str]) -> Iterator[nn.Module]:
    """Within this context every :class:`BiMambaMixer` in ``model`` runs ``backend`` (a key
    of :data:`mmshufflemamba.ops.BACKENDS`; None: the automatic choice), e.g.
    ``'exportable'`` for ``torch.onnx.export(dynamo=True)`` or ``'stand_in'`` for a FLOP
    tracer; each mixer's own setting is restored after. Yields ``model``. (Only the scan:
    the norms' compiled kernel follows ``MMSHUFFLEMAMBA_SCAN_BACKEND`` alone.)"""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f'{backend!r} is not a selective-scan backend; use None (auto) or '
                         f'one of {", ".join(BACKENDS)}.')
    mixers = [m for m in model.modules() if isinstance(m, BiMambaMixer)]
    previous = [m.scan_backend for m in mixers]
    for mixer in mixers:
        mixer.scan_backend = backend
    try:
        yield model
    finally:
        for mixer, setting in zip(mixers, previous):
            mixer.scan_backend = setting
