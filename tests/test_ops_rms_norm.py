"""The compiled RMSNorm (``fused_rms_norm``): values and both gradients against the formula
(float64), what it keeps for the backward pass, and where RMSNorm runs it."""
import os

import pytest
import torch
from helpers import RecordOps

from mmshufflemamba.models import RMSNorm
from mmshufflemamba.ops import BACKEND_ENV
from mmshufflemamba.ops import rms_norm as rms_norm_module
from mmshufflemamba.ops.rms_norm import fused_rms_norm, fused_rms_norm_available

if os.environ.get(BACKEND_ENV, 'auto') not in ('auto', 'compiled'):
    pytest.skip(f'{BACKEND_ENV}={os.environ[BACKEND_ENV]}: the compiled kernels are not in use',
                allow_module_level=True)


def definition(x, weight, eps):
    """RMSNorm as Vim writes it (mamba_ssm's rms_norm_ref): x / sqrt(mean(x^2) + eps) * w."""
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def inputs(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3).requires_grad_()
    w = (torch.randn(shape[-1], generator=g, dtype=dtype)).requires_grad_()
    return x, w, torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize('shape, threads', [((2, 7, 37), 1), ((1, 1, 5), 1), ((200, 16), 3),
                                            ((3, 50, 24), 2)])
def test_values_and_gradients_equal_the_definition(shape, threads):
    """Rows split into 1-3 tasks (each with its own partial weight gradient), widths that
    are and are not multiples of a vector."""
    x, w, dy = inputs(shape)
    expected = definition(x, w, 1e-5)
    ex, ew = torch.autograd.grad(expected, (x, w), dy)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = fused_rms_norm(x, w, 1e-5)
        gx, gw = torch.autograd.grad(y, (x, w), dy)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, ex, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(gw, ew, rtol=1e-11, atol=1e-12)


def test_without_autograd_the_function_is_skipped(monkeypatch):
    """Under no_grad and inference_mode the kernel's forward runs without the
    autograd.Function: same bits."""
    x, w, _ = inputs((3, 5, 24), torch.float32, seed=3)
    with_autograd = fused_rms_norm(x, w, 1e-5)
    monkeypatch.setattr(rms_norm_module._FusedRMSNorm, 'apply', None)  # calling it would fail
    with torch.no_grad():
        assert torch.equal(fused_rms_norm(x, w, 1e-5), with_autograd.detach())
    with torch.inference_mode():
        assert torch.equal(fused_rms_norm(x, w, 1e-5), with_autograd.detach())


def test_float32_and_gradcheck():
    x, w, dy = inputs((4, 9, 40), torch.float32, seed=1)
    y = fused_rms_norm(x, w, 1e-6)
    gx, gw = torch.autograd.grad(y, (x, w), dy)
    ref = definition(x.double(), w.double(), 1e-6)
    rx, rw = torch.autograd.grad(ref, (x, w), dy.double())
    torch.testing.assert_close(y, ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, rx.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw.float(), rtol=1e-5, atol=1e-4)
    x, w, _ = inputs((3, 5, 6), seed=2)
    assert torch.autograd.gradcheck(lambda a, b: fused_rms_norm(a, b, 1e-5), (x, w))


def test_keeps_only_the_input_and_one_value_per_row():
    """For the backward pass: x itself (the residual stream, alive anyway) and rstd, not a
    normalised copy of x."""
    x, w, _ = inputs((2, 11, 32))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_rms_norm(x, w, 1e-5)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert sorted(t.numel() for t in saved if t.numel() != x.numel()) == [22, 32]


def test_rmsnorm_runs_it_where_it_can():
    """RMSNorm: the compiled kernel for float32/float64 on CPU in plain eager calls; its torch
    formula for half precision, mixed dtypes, and under a dispatch mode (as torch.export's
    FakeTensors)."""
    norm = RMSNorm(24).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    y = norm(x)
    assert type(y.grad_fn).__name__ == '_FusedRMSNormBackward'
    torch.testing.assert_close(y, definition(x, norm.weight, norm.eps), rtol=1e-12, atol=1e-13)
    assert not fused_rms_norm_available(x.bfloat16(), norm.weight.bfloat16())
    assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16
    assert not fused_rms_norm_available(x.float(), norm.weight.double())  # dtypes differ
    with RecordOps():
        assert not fused_rms_norm_available(x, norm.weight)
        assert type(norm(x).grad_fn).__name__ == 'MulBackward0'


def test_the_kernels_switched_off_leave_the_torch_formula(monkeypatch):
    norm = RMSNorm(8)
    x = torch.randn(3, 8, requires_grad=True)
    assert fused_rms_norm_available(x, norm.weight)
    monkeypatch.setenv(BACKEND_ENV, 'torch')
    assert not fused_rms_norm_available(x, norm.weight)
    assert type(norm(x).grad_fn).__name__ == 'MulBackward0'


def test_wrong_width_is_refused():
    with pytest.raises(ValueError, match='the last dimension must be 8'):
        fused_rms_norm(torch.randn(2, 7), torch.ones(8), 1e-5)


@pytest.mark.parametrize('case', ['transposed', 'one row', 'no rows'])
def test_other_layouts_equal_the_definition(case):
    g = torch.Generator().manual_seed(3)
    x = {'transposed': torch.randn(16, 3, 5, generator=g, dtype=torch.float64).transpose(0, 2),
         'one row': torch.randn(16, generator=g, dtype=torch.float64),
         'no rows': torch.zeros(0, 4, 16, dtype=torch.float64)}[case].requires_grad_()
    w = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    y = fused_rms_norm(x, w, 1e-5)
    expected = definition(x, w, 1e-5)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-13)
    dy = torch.ones_like(y)
    for a, b in zip(torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(expected, (x, w), dy)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_what_the_kernel_cannot_do_takes_the_torch_formula():
    """torch.func transforms, forward-mode AD, an inference tensor that autograd would have
    to keep, no channels: RMSNorm computes them with torch ops. A second derivative of the
    kernel's output raises instead of coming out wrong."""
    norm = RMSNorm(6).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    expected = torch.func.grad(lambda t: definition(t, norm.weight.detach(), norm.eps).sum())(x)
    got = torch.func.grad(lambda t: torch.func.functional_call(norm, {}, (t, )).sum())(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = norm(fwAD.make_dual(x, torch.ones_like(x)))
        assert fwAD.unpack_dual(out).tangent is not None
    with torch.inference_mode():
        frozen = torch.randn(2, 6, dtype=torch.float64)
    assert not fused_rms_norm_available(frozen, norm.weight)
    norm(frozen).sum().backward()
    assert not fused_rms_norm_available(torch.zeros(2, 0), torch.ones(0))
    x.requires_grad_()
    (g, ) = torch.autograd.grad(norm(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
