"""The PyTorch scan's dtype handling, and ``causal_conv1d``.

Values and gradients of the PyTorch scan (and of every other backend) against the
reference: tests/test_scan_conformance.py.
"""
import pytest
import torch
from helpers import scan_inputs

from mmshufflemamba.ops import causal_conv1d, selective_scan_reference, selective_scan_torch


def test_scan_keeps_float32_state_for_low_precision_inputs():
    inputs = scan_inputs(1, 4, 3, 6, dtype=torch.float32)
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
