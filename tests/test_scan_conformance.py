"""Every selective-scan backend against the textbook reference, in values and in the
gradient of every input (``u, delta, A, B, C, D, z, delta_bias``).

Backends: every entry of ``BACKENDS`` that computes the scan (``torch``, ``compiled``,
``triton`` under ``TRITON_INTERPRET=1`` on CPU, ``exportable``, ``mamba_ssm``), each run
through its table entry; one whose ``why_not`` refuses a call is skipped with its reason
(``mamba_ssm`` here: it needs CUDA; ``torch`` and ``compiled`` for the last state).
``stand_in`` computes no scan: only its shapes and dtypes are checked. The oracle is
``selective_scan_reference`` in float64 on the same values (the comparison:
``helpers.assert_scan_matches_reference``); the reference itself is checked by
``gradcheck`` and against the recurrence written out for two steps.

The cases are not a full product (that would be thousands per backend). The compiled
kernels (``torch``, ``compiled``) run all of them:

* ``OPTION_CASES``: the full product of ``D``, ``z``, ``delta_bias`` (each given or not),
  softplus on/off and four B/C layouts (each of ``(D, N)``, ``(b, N, L)``,
  ``(b, G, N, L)`` for B and for C, shared beside variable), in float64, at ``L = 7``.
* ``SIZE_CASES``: float32 and float64, every option on, across the chunk boundaries
  (``L`` = 1, 5 below the chunk; 32 = one chunk of either kernel (Triton's, and the C++
  kernel's checkpoint interval); 33 and 70, not multiples; 64 = two; 130 = four and a
  partial), ``d_state`` 1 and 16 (the
  C++ kernel's specialisation), softplus arguments beyond +-20 (its linear and
  exponential tails), and one float32 case with every option off and no softplus.
* ``STRIDE_CASES``: non-contiguous inputs, float32 and float64, each layout: transposed
  views (u, delta and z from ``(b, L, D)``, B and C from ``(b, L, N)``, A from ``(N, D)``,
  as the mixer passes them) and strided views (every other element of the last dim, D and
  delta_bias included), at ``L = 33``.

The backends that are slow here (``triton`` interpreted, ``exportable`` through
``torch.ops.higher_order.scan`` in eager mode: seconds per call) and ``mamba_ssm`` run
``COVERING_CASES``, where every option, layout, dtype, stride kind and the softplus tails
appear at least once, and ``d_state`` 1 and 16. Triton runs them with chunks of 4 steps
and blocks of 4 channels below ``L = 32`` (at ``L = 9``: three chunks, so the carry
between chunks decays a nonzero state; the same kernels as the default tiles) and
through its table entry (chunks of 32) at ``L = 33``.
``LAST_STATE_CASES`` (``return_last_state``, with and without a gradient reaching ``y``)
run on every backend that returns the last state.

6 channels make a partial Triton block of 4; 3 groups of 2 channels halve it to 2.
"""
import inspect
import itertools
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import pytest
import torch
from helpers import assert_scan_matches_reference, scan_inputs, triton_scan_with_tiles
from torch import Tensor

from mmshufflemamba.ops import BACKENDS, selective_scan_reference
from mmshufflemamba.ops.scan_contract import ScanCall, ScanFn

BATCH, CHANNELS, STATE, GROUPS = 2, 6, 3, 3
SCANNING = [name for name in BACKENDS if name != 'stand_in']
OPTIONAL = ('D', 'z', 'delta_bias')
# (B, C): each kind for B and for C, a shared matrix beside a variable one
LAYOUTS = [('var', 'var'), ('shared', 'shared'), ('shared', 'group'), ('group', 'var')]


class Case(NamedTuple):
    dtype: torch.dtype = torch.float64
    length: int = 7
    layout: Tuple[str, str] = ('var', 'var')
    given: Tuple[str, ...] = OPTIONAL  # the optional inputs passed (others are None)
    softplus: bool = True
    strides: str = 'contiguous'  # or 'transposed', 'strided'
    state: int = STATE
    tails: bool = False  # some softplus arguments beyond +-20

    def __str__(self) -> str:
        given = '+'.join(self.given) or 'bare'
        return (f'{str(self.dtype)[6:]}-L{self.length}-N{self.state}-{"/".join(self.layout)}-'
                f'{given}-{"softplus" if self.softplus else "raw"}-{self.strides}'
                f'{"-tails" if self.tails else ""}')


F32, F64 = torch.float32, torch.float64
OPTION_CASES = [
    Case(layout=layout, given=tuple(k for k, on in zip(OPTIONAL, flags) if on),
         softplus=softplus)
    for layout, flags, softplus in itertools.product(LAYOUTS, itertools.product(
        (True, False), repeat=3), (True, False))
]
SIZE_CASES = [Case(dtype, length) for dtype in (F32, F64)
              for length in (1, 5, 32, 33, 64, 70, 130)] + [
                  Case(F64, 65, ('shared', 'var'), state=16),
                  Case(F32, 70, ('var', 'group'), state=16),
                  Case(F64, 33, ('group', 'group'), state=1), Case(F64, 9, tails=True),
                  Case(F32, 70, ('shared', 'var'), given=(), softplus=False)]
STRIDE_CASES = [Case(dtype, 33, layout, strides=strides) for dtype in (F32, F64)
                for layout in LAYOUTS for strides in ('transposed', 'strided')]
COVERING_CASES = [
    Case(F64, 9, strides='transposed'),
    Case(F64, 9, ('shared', 'shared'), given=(), softplus=False, state=16),
    Case(F64, 9, ('shared', 'group'), given=('D', ), tails=True),
    Case(F64, 9, ('group', 'var'), given=('z', 'delta_bias'), softplus=False, strides='strided'),
    Case(F32, 9, ('shared', 'group'), strides='strided'),
    Case(F32, 1, ('shared', 'var'), given=(), softplus=False, state=1),
    Case(F64, 33, ('var', 'shared'))]
LAST_STATE_CASES = [(Case(F64, 8, ('var', 'shared')), True),
                    (Case(F64, 9, ('group', 'var'), given=('z', ), strides='transposed'), False),
                    (Case(F32, 9, ('var', 'group')), True)]
FAST = ('torch', 'compiled')
BACKEND_CASES = [(name, case) for name in SCANNING
                 for case in (OPTION_CASES + SIZE_CASES + STRIDE_CASES if name in FAST else
                              COVERING_CASES)]


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Triton runs its kernels on CPU under its interpreter."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # read when the kernels are decorated


def runnable(name: str, case: Case, return_last_state: bool = False) -> Callable:
    """The backend's run function for ``case``, or a skip with its ``why_not``."""
    reason = BACKENDS[name].why_not(ScanCall('cpu', case.dtype, return_last_state))
    if reason:
        pytest.skip(f'{name}: {reason}')
    if name == 'triton' and case.length < 32:
        return triton_scan_with_tiles(chunk=4, block_d=4)
    return BACKENDS[name].run


def non_contiguous(t: Tensor, strides: str) -> Tensor:
    """A leaf with ``t``'s values and non-contiguous strides (1-d tensors stay contiguous
    for ``'transposed'``)."""
    t = t.detach()
    if strides == 'transposed' and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif strides == 'strided':
        base = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        base[..., ::2] = t
        t = base[..., ::2]
    return t.requires_grad_()


def inputs_of(case: Case) -> Dict[str, Optional[Tensor]]:
    """The inputs of ``case``: seeded leaves, optional ones not given set to None."""
    inputs = scan_inputs(BATCH, CHANNELS, case.state, case.length, *case.layout,
                         groups=GROUPS, dtype=case.dtype)
    with torch.no_grad():
        if not case.softplus:  # raw step sizes must be positive for a stable recurrence
            inputs['delta'].abs_()
        if case.tails:  # softplus(x) is x above 20 and exp(x) far below -20
            inputs['delta'][:, :2, ::2] *= 30
    if case.strides != 'contiguous':
        inputs = {k: non_contiguous(v, case.strides) for k, v in inputs.items()}
        assert not inputs['u'].is_contiguous() and not inputs['A'].is_contiguous()
    return {k: (v if k not in OPTIONAL or k in case.given else None)
            for k, v in inputs.items()}


@pytest.mark.parametrize('backend,case', BACKEND_CASES, ids=lambda c: str(c))
def test_backend_matches_reference(backend, case):
    assert_scan_matches_reference(runnable(backend, case), inputs_of(case),
                                  delta_softplus=case.softplus)


@pytest.mark.parametrize('case,use_output', LAST_STATE_CASES,
                         ids=lambda c: str(c) if isinstance(c, Case) else f'use_output={c}')
@pytest.mark.parametrize('backend', SCANNING)
def test_backend_last_state_matches_reference(backend, case, use_output):
    assert_scan_matches_reference(runnable(backend, case, return_last_state=True),
                                  inputs_of(case), delta_softplus=case.softplus,
                                  return_last_state=True, use_output=use_output)


@pytest.mark.parametrize('backend', SCANNING)
def test_backend_refuses_bad_shapes(backend):
    run = runnable(backend, Case(length=32))
    inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 3, 6).items()}
    bad = [(dict(u=inputs['u'][..., :5]), 'u and delta must both have shape'),
           (dict(A=inputs['A'][:2]), 'A must have shape'),
           (dict(B=torch.randn(1, 3, 3, 6, dtype=F64)), 'groups'),
           (dict(C=torch.randn(1, 3, 5, dtype=F64)), 'C must have shape')]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            run(**dict(inputs, **change))


@pytest.mark.parametrize('backend', SCANNING)
def test_backend_that_refuses_the_last_state_says_so(backend):
    run = runnable(backend, Case(length=32))
    if BACKENDS[backend].why_not(ScanCall('cpu', torch.float64, True)) is None:
        pytest.skip(f'{backend} returns the last state')
    with pytest.raises(NotImplementedError, match='return_last_state'):
        run(**scan_inputs(1, 2, 2, 3), return_last_state=True)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('dtype', [F32, F64])
def test_stand_in_has_the_scans_shape_and_dtype(layout, dtype):
    inputs = {k: v.detach() for k, v in scan_inputs(BATCH, CHANNELS, STATE, 5, *layout,
                                                    dtype=dtype).items()}
    out = BACKENDS['stand_in'].run(**inputs, delta_softplus=True)
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    assert (out.shape, out.dtype) == (expected.shape, expected.dtype)


def test_reference_gradcheck():
    inputs = scan_inputs(1, 2, 2, 3, 'var', 'group')
    assert torch.autograd.gradcheck(
        lambda *args: selective_scan_reference(*args, delta_softplus=True, return_last_state=True),
        tuple(inputs.values()))


def test_reference_is_the_recurrence():
    """Two steps written out: ``h_0 = dt_0 B_0 u_0``, ``h_1 = exp(dt_1 A) h_0 + dt_1 B_1 u_1``,
    ``y_t = (C_t . h_t + D u_t) silu(z_t)``, ``dt = softplus(delta + delta_bias)``."""
    p = {k: v.detach() for k, v in scan_inputs(2, 3, 4, 2).items()}
    dt = torch.nn.functional.softplus(p['delta'] + p['delta_bias'][:, None])  # (b, D, L)
    drive = dt[..., None] * p['u'][..., None] * p['B'].transpose(1, 2)[:, None]  # (b, D, L, N)
    h0 = drive[:, :, 0]
    h1 = torch.exp(dt[:, :, 1, None] * p['A']) * h0 + drive[:, :, 1]
    C = p['C'].transpose(1, 2)[:, None]  # (b, 1, L, N)
    y = torch.stack([(C[:, :, 0] * h0).sum(-1), (C[:, :, 1] * h1).sum(-1)], -1)
    y = (y + p['D'][:, None] * p['u']) * torch.nn.functional.silu(p['z'])
    out, last = selective_scan_reference(**p, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, h1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('backend', list(BACKENDS))
def test_backend_run_has_the_contract_signature(backend):
    contract = list(inspect.signature(ScanFn.__call__).parameters.values())[1:]  # no self
    run = inspect.signature(BACKENDS[backend].run).parameters.values()
    assert [(p.name, p.default) for p in run] == [(p.name, p.default) for p in contract]
