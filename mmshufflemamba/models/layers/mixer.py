"""The bidirectional Mamba mixer of Vision Mamba ("bimamba v2")."""
import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from mmshufflemamba.ops import BACKENDS, causal_conv1d, choose_backend, selective_scan
from mmshufflemamba.ops.bimamba import bimamba_inner, fused_mixer_available
from mmshufflemamba.ops.cpu_kernel import plain_eager_call
from ..utils.precision import at_least_float32

__all__ = ['BiMambaMixer', 'Recipe', 'use_scan_backend']


class Recipe(NamedTuple):
    """How to compute a tensor again in the backward pass: ``remake()`` gives it bit for bit
    (the forward pass's tensors, autocast state and code), as long as none of ``inputs``
    (the tensors it reads) changes in place in between."""
    remake: Callable[[], Tensor]
    inputs: Sequence[Tensor]

    @classmethod
    def of(cls, compute: Callable[[], Tensor], inputs: Sequence[Tensor],
           device: str) -> 'Recipe':
        """The recipe that runs ``compute`` again without grad, under the autocast state
        ``device`` has now (the forward pass's)."""
        autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)

        def remake() -> Tensor:
            with torch.no_grad(), torch.autocast(device, enabled=autocast[0],
                                                 dtype=autocast[1]):
                return compute()

        return cls(remake, inputs)


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
        recompute: The ``recompute`` argument, settable later.

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
        recompute: Less training memory for more work in the backward pass: let go of
            activations after the forward pass and compute them again, bit for bit, when
            the backward pass needs them. On the fused CPU path: ``in_proj``'s output xz,
            x_proj's outputs and the scans' checkpoints (``2 d_inner + 2 (R + 2N) + 2 N
            d_inner / 32`` floats per token: 2416 for ShuffleMamba-S), for one more
            ``in_proj`` GEMM, x_proj GEMMs and scan forward per block; on any path,
            ``in_proj``'s input where the caller passes its recipe (:class:`MambaBlock`
            does: its norm; ``C`` floats per token more, where in_proj does not keep a
            copy of its own, as under autocast). Everything is kept as usual under
            ``with_cp`` or other saved-tensor hooks (those decide what is kept), under
            tracers, and where in_proj is not a plain hook-free nn.Linear.
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
                 recompute: bool = False):
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
        self.recompute = recompute

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

    def _recomputes(self, hidden: Tensor) -> bool:
        """Whether this forward pass may let go of what :attr:`recompute` names: training in
        plain eager autograd under no other saved-tensor hooks, ``in_proj`` a plain
        nn.Linear without hooks that could change its output, on a contiguous input (the
        GEMM path, so the bits, do not depend on ``requires_grad`` then)."""
        return (self.recompute and torch.is_grad_enabled() and type(self.in_proj) is nn.Linear
                and without_forward_hooks(self.in_proj) and hidden.is_contiguous()
                and plain_eager_call(hidden) and _Recipes.possible())

    def forward(self, hidden: Tensor,
                hidden_recipe: Optional[Recipe] = None) -> Tensor:  # (B, L, C) -> (B, L, C)
        """``hidden_recipe``: how to compute ``hidden`` again (the block's norm), so that,
        with :attr:`recompute`, in_proj need not keep it either."""
        if not self._recomputes(hidden):
            return self._forward(hidden)
        recipes = _Recipes()
        with recipes.hooks():
            if hidden_recipe is not None:
                recipes.add(hidden, hidden_recipe)
            return self._forward(hidden, recipes, hidden_recipe)

    def _forward(self, hidden: Tensor, recipes: Optional['_Recipes'] = None,
                 hidden_recipe: Optional[Recipe] = None) -> Tensor:
        xz = self.in_proj(hidden)  # (B, L, 2 d_inner): one GEMM on contiguous tokens
        backend = choose_backend(xz, requested=self.scan_backend)  # once per forward
        if self._runs_fused(xz, backend):
            if recipes is not None:  # xz = in_proj(hidden) again, from hidden's recipe if any
                recipes.add(xz, self._in_proj_again(hidden, hidden_recipe))
            # out_proj inside: its input y is rebuilt in the backward pass, not kept
            return bimamba_inner(
                xz, self.conv1d.weight, self.conv1d.bias, self.conv1d_b.weight,
                self.conv1d_b.bias, self.x_proj.weight, self.x_proj_b.weight,
                self.dt_proj.weight, self.dt_proj_b.weight, self.dt_proj.bias,
                self.dt_proj_b.bias, -torch.exp(at_least_float32(self.A_log)),
                -torch.exp(at_least_float32(self.A_b_log)), at_least_float32(self.D),
                at_least_float32(self.D_b), self.out_proj.weight, self.out_proj.bias,
                recompute=recipes is not None)
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) views
        y_fwd = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log,
                             self.D, backend)
        y_bwd = self._branch(x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b,
                             self.dt_proj_b, self.A_b_log, self.D_b, backend)
        y = (y_fwd + y_bwd.flip(-1)) / 2
        return self.out_proj(y.transpose(1, 2))

    def _in_proj_again(self, hidden: Tensor, hidden_recipe: Optional[Recipe]) -> Recipe:
        """``in_proj(hidden)`` as this forward pass computes it: these tensors (hidden made
        again by its recipe where it has one), this autocast state."""
        weight, bias = self.in_proj.weight, self.in_proj.bias
        params = [t for t in (weight, bias) if t is not None]
        remake_hidden = (lambda: hidden) if hidden_recipe is None else hidden_recipe.remake
        return Recipe.of(lambda: nn.functional.linear(remake_hidden(), weight, bias),
                         [*params, *([hidden] if hidden_recipe is None
                                     else hidden_recipe.inputs)], hidden.device.type)


def without_forward_hooks(module: nn.Module) -> bool:
    """No forward hook could change ``module``'s output: none on it, no global one."""
    return not (module._forward_hooks or module._forward_pre_hooks
                or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _version(t: Tensor) -> Optional[int]:
    """``t``'s version counter (None for an inference tensor, which has none)."""
    return None if t.is_inference() else t._version


class _Remade:
    """What autograd keeps of a target of :class:`_Recipes`: its shape and recipe."""
    __slots__ = ('shape', 'recipe', 'versions')

    def __init__(self, shape: torch.Size, recipe: Recipe):
        self.shape, self.recipe = shape, recipe
        self.versions = [_version(t) for t in recipe.inputs]


class _Kept:
    """What autograd keeps of any other tensor under :class:`_Recipes`: the tensor, detached
    (a saved output holding its own node would be a reference cycle autograd cannot free),
    and its version, checked on unpacking as autograd checks what it saves itself."""
    __slots__ = ('tensor', 'version')

    def __init__(self, t: Tensor):
        self.tensor, self.version = t.detach(), _version(t)


class _Recipes:
    """Saved-tensor hooks under which autograd keeps the tensors given to :meth:`add` (or
    views of all of one) as their recipes, so that they are freed after the forward pass
    and made again when the backward pass unpacks them. Every other saved tensor is kept
    (see :class:`_Kept`)."""

    def __init__(self):
        self._targets = []  # (data_ptr, dtype, numel, recipe)

    @staticmethod
    def possible() -> bool:
        """False under other saved-tensor hooks (activation checkpointing, offloading):
        theirs decide what is kept (and where this cannot be told), and where such hooks
        are disabled."""
        top_hooks = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
        enabled = getattr(torch._C._autograd, '_saved_tensors_hooks_is_enabled', None)
        return (top_hooks is not None and enabled is not None and enabled()
                and top_hooks(False) is None)

    def add(self, target: Tensor, recipe: Recipe) -> None:
        self._targets.append((target.data_ptr(), target.dtype, target.numel(), recipe))

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, t: Tensor):
        if t.is_contiguous():
            for ptr, dtype, numel, recipe in self._targets:
                if t.data_ptr() == ptr and t.dtype == dtype and t.numel() == numel:
                    return _Remade(t.shape, recipe)
        return _Kept(t)


def _unpack(saved):
    if isinstance(saved, _Kept):
        t = saved.tensor
        if _version(t) != saved.version:
            raise RuntimeError(
                'one of the variables needed for gradient computation has been modified by '
                f'an inplace operation: [{t.dtype} {tuple(t.shape)}] is at version '
                f'{_version(t)}; expected version {saved.version} instead (saved under '
                'BiMambaMixer.recompute\'s hooks).')
        return t
    if [_version(t) for t in saved.recipe.inputs] != saved.versions:
        raise RuntimeError(
            'a tensor the backward pass computes again (BiMambaMixer.recompute) cannot be: '
            'what it is made from (in_proj\'s input or weights, the block\'s residual '
            'stream or norm) was modified in place after the forward pass. Modify copies, '
            'or set recompute=False.')
    return saved.recipe.remake().view(saved.shape)


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
