"""Which selective-scan backend runs, and that each one is called correctly.

The mamba_ssm branch cannot run here (it needs CUDA), so it is forced with a stand-in of
exactly ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``'s signature and return
convention, which refuses what its CUDA kernel refuses (the ``TORCH_CHECK``s of
state-spaces/mamba ``csrc/selective_scan/selective_scan.cpp``: input dtypes, float32 A, D
and delta_bias, the dtype rule of B and C, unit last-dim strides, shapes) and computes with
the textbook scan. The mixer run through it must give the native path's output and
gradients.
"""
import importlib
import types
import warnings

import pytest
import torch

from mmshufflemamba.models import BiMambaMixer, use_scan_backend
from mmshufflemamba.ops import BACKEND_ENV, scan_backend, selective_scan_reference

scan_module = importlib.import_module('mmshufflemamba.ops.selective_scan')  # not the function
mamba_ssm_scan = importlib.import_module('mmshufflemamba.ops.mamba_ssm_scan')


class MambaSsmStandIn:
    """``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
    delta_softplus=False, return_last_state=False)``: ``out`` (u's dtype), or
    ``(out, last_state)``."""

    def __init__(self):
        self.calls = []

    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                 delta_softplus=False, return_last_state=False):
        # the interface (SelectiveScanFn.forward) makes the last dims contiguous first
        u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C))
        z = z if z is None or z.stride(-1) == 1 else z.contiguous()
        D = None if D is None else D.contiguous()
        input_type = u.dtype
        assert input_type in (torch.float32, torch.float16, torch.bfloat16), input_type
        assert A.dtype == torch.float32, A.dtype  # weight type (complex not used here)
        assert delta.dtype == input_type
        for M in (B, C):  # variable B/C in the input type, shared ones in the weight type
            assert M.dtype == (input_type if M.dim() >= 3 else A.dtype), (M.dim(), M.dtype)
        batch, dim, seqlen = u.shape
        assert delta.shape == u.shape and A.shape[0] == dim
        dstate = A.shape[1]
        for M in (B, C):
            if M.dim() == 2:
                assert M.shape == (dim, dstate)
            else:  # selective_scan_fn turns (b, N, L) into (b, 1, N, L)
                M4 = M.unsqueeze(1) if M.dim() == 3 else M
                assert M4.shape[0] == batch and M4.shape[2:] == (dstate, seqlen)
        for t in (D, delta_bias):
            assert t is None or (t.dtype == torch.float32 and t.shape == (dim, ))
        if z is not None:
            assert z.dtype == input_type and z.shape == u.shape
        for t in (u, delta, z, B, C):  # the kernel's stride checks
            assert t is None or t.stride(-1) == 1 or t.shape[-1] == 1
        assert isinstance(delta_softplus, bool) and isinstance(return_last_state, bool)
        self.calls.append(dict(dtypes=(u.dtype, A.dtype), B=tuple(B.shape),
                               softplus=delta_softplus))
        out = selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                       return_last_state=True)
        y, last = out
        return (y.to(input_type), last) if return_last_state else y.to(input_type)


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in as mamba_ssm's kernel, verified on the CPU (the check runs it once: its
    input checks accept the check's problem) before the test's own calls are counted."""
    fake = MambaSsmStandIn()
    monkeypatch.setattr(mamba_ssm_scan, 'load_mamba_ssm_scan', lambda: fake)
    mamba_ssm_scan.verify.cache_clear()
    assert mamba_ssm_scan.verify('cpu', None) is None
    fake.calls.clear()
    yield fake
    mamba_ssm_scan.verify.cache_clear()


def mixer_and_input(seed=0):
    torch.manual_seed(seed)
    mixer = BiMambaMixer(16, d_state=4)
    hidden = torch.randn(2, 11, 16, requires_grad=True)
    return mixer, hidden


def run(mixer, hidden, monkeypatch, backend, autocast=False):
    monkeypatch.setenv(BACKEND_ENV, backend)
    hidden.grad = None
    mixer.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = mixer(hidden)
    out.float().square().sum().backward()
    grads = [hidden.grad.clone()] + [p.grad.clone() for p in mixer.parameters()]
    return out.detach().float(), grads


@pytest.mark.parametrize('autocast', [False, True])
def test_mamba_ssm_branch_gets_its_arguments_right(stand_in, monkeypatch, autocast):
    mixer, hidden = mixer_and_input()
    native, native_grads = run(mixer, hidden, monkeypatch, 'auto', autocast)
    forced, forced_grads = run(mixer, hidden, monkeypatch, 'mamba_ssm', autocast)
    # two directions per forward, with variable B (b, N, L) in the input dtype
    assert len(stand_in.calls) == 2
    assert all(c['B'] == (2, 4, 11) and c['softplus'] for c in stand_in.calls)
    expected_input = torch.bfloat16 if autocast else torch.float32
    assert all(c['dtypes'] == (expected_input, torch.float32) for c in stand_in.calls)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(forced, native, **tol)
    for a, b in zip(forced_grads, native_grads):
        torch.testing.assert_close(a, b, **tol)


def test_auto_picks_the_compiled_kernel_on_cpu(monkeypatch):
    from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    u = torch.zeros(1, 2, 3)
    assert scan_backend(u) == ('compiled' if load_cpu_kernel() is not None else 'torch')
    assert scan_backend(u, return_last_state=True) == 'torch'


def fake_cuda(dtype=torch.float32):
    """What scan_backend reads of a CUDA tensor, on a machine without CUDA."""
    return types.SimpleNamespace(is_cuda=True, device=torch.device('cuda'), dtype=dtype)


@pytest.mark.parametrize('mamba,triton,dtype,expected', [
    (True, True, torch.float32, 'mamba_ssm'),
    (True, True, torch.bfloat16, 'mamba_ssm'),
    (True, True, torch.float64, 'triton'),  # mamba_ssm takes no float64
    (False, True, torch.float32, 'triton'),
    (False, False, torch.float32, 'torch'),
])
def test_cuda_order_mamba_ssm_then_triton_then_torch(monkeypatch, mamba, triton, dtype,
                                                      expected):
    import mmshufflemamba.ops.triton_scan as triton_scan
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(mamba_ssm_scan, 'load_mamba_ssm_scan',
                        lambda: (object() if mamba else None))
    monkeypatch.setattr(mamba_ssm_scan, 'verify', lambda device, index: None)  # passed
    monkeypatch.setattr(triton_scan, 'triton_available', lambda: triton)
    assert scan_backend(fake_cuda(dtype)) == expected


def test_slow_cuda_fallback_warns_once_and_names_the_fix(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    scan_module._announce.cache_clear()
    with pytest.warns(RuntimeWarning, match='pip install triton'):
        scan_module._announce('cuda', 'torch')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        scan_module._announce('cuda', 'torch')  # once per process


def test_forced_backends_refuse_what_they_cannot_run(monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.setattr(mamba_ssm_scan, 'load_mamba_ssm_scan', lambda: None)
    monkeypatch.setenv(BACKEND_ENV, 'mamba_ssm')
    with pytest.raises(RuntimeError, match='mamba_ssm does not import'):
        scan_backend(u)
    monkeypatch.setenv(BACKEND_ENV, 'compiled')
    with pytest.raises(RuntimeError, match='does not return the last state'):
        scan_backend(u, return_last_state=True)
    monkeypatch.setenv(BACKEND_ENV, 'cuda')
    with pytest.raises(ValueError, match='not a selective-scan backend'):
        scan_backend(u)
    monkeypatch.setenv(BACKEND_ENV, 'torch')
    assert scan_backend(u) == 'torch'


def test_the_backend_is_chosen_once_per_mixer_forward(monkeypatch):
    calls = []
    choose = scan_module._choose
    monkeypatch.setattr(scan_module, '_choose', lambda *args: calls.append(args) or choose(*args))
    mixer, hidden = mixer_and_input()
    for backend in ('auto', 'torch'):  # the fused path; two unfused scans
        monkeypatch.setenv(BACKEND_ENV, backend)
        calls.clear()
        mixer(hidden)
        assert len(calls) == 1, (backend, calls)


def test_a_requested_backend_is_checked_like_the_environment(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    u = torch.zeros(1, 2, 3)
    assert scan_backend(u, requested='exportable') == 'exportable'
    assert scan_backend(u, return_last_state=True, requested='exportable') == 'exportable'
    with pytest.raises(RuntimeError, match="'stand_in' cannot run this call: .*last state"):
        scan_backend(u, return_last_state=True, requested='stand_in')
    with pytest.raises(ValueError, match="'cuda' is not a selective-scan backend"):
        scan_backend(u, requested='cuda')
    monkeypatch.setenv(BACKEND_ENV, 'stand_in')  # computes no scan: never by the switch
    with pytest.raises(ValueError, match='not a selective-scan backend; use auto'):
        scan_backend(u)


def test_use_scan_backend_sets_the_mixers_and_restores_them(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(BiMambaMixer(16, d_state=4), BiMambaMixer(16, d_state=4))
    model[1].scan_backend = 'torch'
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = model(x)
        with use_scan_backend(model, 'exportable') as same:
            assert same is model and [m.scan_backend for m in model] == ['exportable'] * 2
            assert not model[0].fused(x)
            exported = model(x)
    assert [m.scan_backend for m in model] == [None, 'torch']
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='not a selective-scan backend'):
        with use_scan_backend(model, 'cuda'):
            pass
    assert [m.scan_backend for m in model] == [None, 'torch']


def test_only_the_stand_in_can_be_traced(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    mixer, hidden = mixer_and_input()
    with pytest.raises(RuntimeError, match='TorchScript tracing'):
        torch.jit.trace(mixer, (hidden.detach(), ))
    with use_scan_backend(mixer, 'stand_in'):
        traced = torch.jit.trace(mixer, (hidden.detach(), ))
        assert traced(hidden.detach()).shape == hidden.shape


def test_triton_branch_runs_the_mixer_under_the_interpreter(monkeypatch):
    pytest.importorskip('triton')
    from mmshufflemamba.ops import triton_available
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    if not triton_available():
        pytest.skip('Triton >= 3.4 is not available')
    mixer, hidden = mixer_and_input(seed=1)
    native, native_grads = run(mixer, hidden, monkeypatch, 'torch')
    triton_out, triton_grads = run(mixer, hidden, monkeypatch, 'triton')
    torch.testing.assert_close(triton_out, native, rtol=1e-4, atol=1e-5)
    for a, b in zip(triton_grads, native_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
