"""The PyTorch selective scan against the sequential definition, in values and gradients."""
import pytest
import torch

from mmshufflemamba.ops import (causal_conv1d, selective_scan, selective_scan_reference,
                                selective_scan_torch)


def sequential_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The recurrence written out with Python loops over b, d and t (no vectorisation).

    Independent of both implementations under test; B and C are ``(b, N, L)``.
    """
    batch, channels, length = u.shape
    y = torch.zeros_like(u)
    for b in range(batch):
        for d in range(channels):
            h = torch.zeros(A.shape[1], dtype=u.dtype)
            for t in range(length):
                dt = delta[b, d, t] + delta_bias[d]
                if delta_softplus:
                    dt = torch.nn.functional.softplus(dt)
                h = torch.exp(dt * A[d]) * h + dt * B[b, :, t] * u[b, d, t]
                out = (C[b, :, t] * h).sum() + D[d] * u[b, d, t]
                y[b, d, t] = out * z[b, d, t] * torch.sigmoid(z[b, d, t])
    return y


def make_inputs(batch, channels, state, length, B_kind='var', C_kind='var', groups=2,
                dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    def matrix(kind):
        if kind == 'var':
            return randn(batch, state, length)
        if kind == 'shared':
            return randn(channels, state)
        return randn(batch, groups, state, length)

    A = (-0.5 - torch.rand(channels, state, generator=g, dtype=dtype)).requires_grad_()
    return dict(u=randn(batch, channels, length), delta=randn(batch, channels, length),
                A=A, B=matrix(B_kind), C=matrix(C_kind), D=randn(channels),
                z=randn(batch, channels, length), delta_bias=randn(channels))


def assert_matches(out, expected, inputs):
    """``out`` equals ``expected`` in value, and in the gradient of a random weighting of it
    w.r.t. every given (not None) input; float64 tolerances."""
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    given = {k: v for k, v in inputs.items() if v is not None}
    weight = torch.randn_like(expected)
    got = torch.autograd.grad((out * weight).sum(), list(given.values()))
    want = torch.autograd.grad((expected * weight).sum(), list(given.values()))
    for name, g, w in zip(given, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=f'grad of {name}')


SHAPES = [  # (batch, channels, state, length)
    (2, 4, 3, 9), (1, 3, 2, 1), (1, 5, 4, 7), (3, 2, 1, 16), (2, 6, 5, 33)]


@pytest.mark.parametrize('shape', SHAPES)
def test_scan_equals_sequential_definition(shape):
    inputs = make_inputs(*shape)
    expected = sequential_scan(*inputs.values(), True)
    for fn in (selective_scan_reference, selective_scan):
        torch.testing.assert_close(fn(**inputs, delta_softplus=True), expected, rtol=1e-10,
                                   atol=1e-10)
    assert_matches(selective_scan_torch(**inputs, delta_softplus=True), expected, inputs)


@pytest.mark.parametrize('B_kind,C_kind', [('shared', 'var'), ('var', 'shared'),
                                           ('group', 'group'), ('shared', 'shared')])
@pytest.mark.parametrize('softplus', [True, False])
def test_scan_matches_reference_for_every_matrix_layout(B_kind, C_kind, softplus):
    inputs = make_inputs(2, 4, 3, 11, B_kind, C_kind)
    if not softplus:  # keep delta positive so the recurrence stays stable
        inputs['delta'] = inputs['delta'].detach().abs().requires_grad_()
    assert_matches(selective_scan_torch(**inputs, delta_softplus=softplus),
                   selective_scan_reference(**inputs, delta_softplus=softplus), inputs)


def test_scan_optional_inputs_absent():
    inputs = make_inputs(1, 3, 2, 5)
    for drop in ('D', 'z', 'delta_bias'):
        kwargs = dict(inputs, **{drop: None})
        torch.testing.assert_close(
            selective_scan_torch(**kwargs), selective_scan_reference(**kwargs))


@pytest.mark.parametrize('B_kind', ['var', 'shared', 'group'])
def test_scan_gradcheck(B_kind):
    inputs = make_inputs(1, 2, 2, 4, B_kind, 'var')

    def fn(*args):
        return selective_scan_torch(*args, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def test_scan_keeps_float32_state_for_low_precision_inputs():
    inputs = make_inputs(1, 4, 3, 6, dtype=torch.float32)
    low = {k: v.detach().to(torch.bfloat16) for k, v in inputs.items()}
    out = selective_scan_torch(**low, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    ref = selective_scan_reference(**{k: v.float() for k, v in low.items()},
                                   delta_softplus=True)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out32 = selective_scan_torch(**{k: v.detach() for k, v in inputs.items()},
                                     delta_softplus=True)
    assert out32.dtype == torch.float32  # autocast does not lower the scan


def test_scan_rejects_bad_shapes():
    inputs = make_inputs(1, 4, 3, 6)
    with pytest.raises(ValueError, match='A must have shape'):
        selective_scan_torch(**dict(inputs, A=inputs['A'][:2]))
    with pytest.raises(ValueError, match='groups'):
        selective_scan_torch(**dict(inputs, B=torch.randn(1, 3, 3, 6, dtype=torch.float64)))
    with pytest.raises(NotImplementedError, match='return_last_state'):
        selective_scan_torch(**inputs, return_last_state=True)


def test_causal_conv1d_is_causal_and_matches_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    out = causal_conv1d(x, w, bias, activation='silu')
    expected = torch.zeros_like(x)
    for t in range(10):
        for k in range(4):  # tap k sees x[t - (3 - k)]
            src = t - (3 - k)
            if src >= 0:
                expected[..., t] += w[:, k] * x[..., src]
    expected = torch.nn.functional.silu(expected + bias[:, None])
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match='activation'):
        causal_conv1d(x, w, bias, activation='relu')
