"""mamba-ssm and causal-conv1d are checked before use: on the first call per process and
device each kernel runs a tiny problem, forward and backward, against our PyTorch
definition. A broken or mismatched install gives one warning (versions, what failed, the
fix) and the next path runs; ``MMSHUFFLEMAMBA_SCAN_BACKEND=mamba_ssm`` makes it an error.

The packages are stand-ins (``tests/stand_ins.py``) built from the real sources of
mamba-ssm 1.x/2.x and causal-conv1d 1.0 to 1.7 and computing on CPU, so the CUDA-only
checks are exercised on CPU tensors: verification is called with the CPU device, and the
automatic order for CPU tensors is made the CUDA one.
"""
import importlib
import re
import warnings

import pytest
import torch

from mmshufflemamba.models import BiMambaMixer
from mmshufflemamba.ops import BACKEND_ENV, scan_backend

scan_module = importlib.import_module('mmshufflemamba.ops.selective_scan')
mamba_ssm_scan = importlib.import_module('mmshufflemamba.ops.mamba_ssm_scan')
conv = importlib.import_module('mmshufflemamba.ops.causal_conv1d')
CPU = torch.device('cpu')


@pytest.fixture
def cuda_order_on_cpu(monkeypatch):
    """The automatic choice for CPU tensors tries what it tries for CUDA ones."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setitem(scan_module.AUTO_ORDER, 'cpu', scan_module.AUTO_ORDER['cuda'])
    return torch.zeros(1, 2, 3)


@pytest.mark.parametrize('mamba,conv_version', [
    ('1.1.1', '1.1.3.post1'), ('1.2.2', None), ('2.2.4', '1.4.0'), ('2.3.2.post1', '1.5.2')])
def test_a_matching_install_is_verified_and_used(kernel_packages, cuda_order_on_cpu, mamba,
                                                  conv_version):
    kernel_packages(mamba_ssm=mamba, causal_conv1d=conv_version)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert mamba_ssm_scan.verify('cpu', None) is None
        assert scan_backend(cuda_order_on_cpu) == 'mamba_ssm'
        if conv_version is not None:
            assert conv.usable_kernel(CPU) is conv.load_causal_conv1d() is not None


def test_the_check_runs_whatever_mode_the_first_call_is_in(kernel_packages):
    """The first forward may come under inference_mode, no_grad or autocast: the check
    still runs forward and backward in float32."""
    kernel_packages(mamba_ssm='2.2.4', causal_conv1d='1.5.2')
    state = torch.random.get_rng_state()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert mamba_ssm_scan.verify('cpu', None) is None
        assert conv.verify(CPU) is None
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded runs stay the same


@pytest.mark.parametrize('version', ['1.0.0', '1.1.0', '1.2.0.post2', '1.4.0', '1.5.2', '1.7.0'])
def test_our_causal_conv1d_call_fits_every_release(kernel_packages, version):
    """activation goes by keyword: from 1.1 the fourth positional parameter is seq_idx."""
    kernel_packages(causal_conv1d=version)
    assert conv.verify(CPU) is None
    x, weight = torch.randn(1, 4, 9), torch.randn(4, 4)
    if version != '1.0.0':  # what a positional call (the code before this check) hit
        with pytest.raises(AttributeError, match="'str' object has no attribute"):
            conv.load_causal_conv1d()(x, weight, None, 'silu')


def test_a_leftover_binding_of_another_release_gives_one_warning(kernel_packages):
    """causal-conv1d 1.4.0's interface passes 7 arguments to a 1.5.2 binding that takes 8."""
    kernel_packages(mamba_ssm='2.2.4', causal_conv1d='1.4.0', conv_binding='1.5.2')
    failure = conv.verify(CPU)
    assert 'causal_conv1d_fwd(): incompatible function arguments' in failure
    assert 'mamba-ssm 2.2.4, causal-conv1d 1.4.0' in failure
    assert ('pip install --no-build-isolation --no-cache-dir --force-reinstall '
            '"mamba-ssm==2.2.4" "causal-conv1d>=1.2,<1.5.1"') in failure
    with pytest.warns(RuntimeWarning, match="incompatible function arguments.*torch's conv1d"):
        assert conv.usable_kernel(CPU) is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once per process and device
        assert conv.usable_kernel(CPU) is None
    assert mamba_ssm_scan.verify('cpu', None) is None  # the scan does not need causal-conv1d


@pytest.mark.parametrize('packages,failed', [
    (dict(scan_fault='wrong'), 'computed something else: the output differs'),
    (dict(scan_fault='none'), "AttributeError: 'NoneType' object has no attribute 'fwd'"),
    (dict(scan_fault='undefined symbol'), 'does not import .ImportError: .*undefined symbol'),
    (dict(mamba_ssm='1.1.1', causal_conv1d=None),  # 1.0/1.1 import causal_conv1d unguarded
     "does not import .ModuleNotFoundError: No module named 'causal_conv1d'"),
])
def test_a_broken_mamba_ssm_warns_once_and_is_passed_over(kernel_packages, cuda_order_on_cpu,
                                                          packages, failed):
    kernel_packages(**dict(dict(mamba_ssm='2.2.2', causal_conv1d='1.4.0'), **packages))
    with pytest.warns(RuntimeWarning) as record:
        assert scan_backend(cuda_order_on_cpu) == 'torch'  # Triton cannot run CPU tensors
        assert scan_backend(cuda_order_on_cpu) == 'torch'
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert re.search(failed, message), message
    assert 'Installed: mamba-ssm ' + packages.get('mamba_ssm', '2.2.2') in message
    assert 'pip install --no-build-isolation' in message and 'pip uninstall' in message
    assert f'{BACKEND_ENV}=mamba_ssm makes this an error' in message


@pytest.mark.parametrize('fault,failed', [
    ('none', "AttributeError: 'NoneType' object has no attribute 'causal_conv1d_fwd'"),
    ('wrong', 'computed something else: the output differs'),
    ('undefined symbol', 'does not import .ImportError: .*undefined symbol'),
])
def test_a_broken_causal_conv1d_warns_once_and_torch_runs(kernel_packages, fault, failed):
    kernel_packages(causal_conv1d='1.5.2', conv_fault=fault)
    expected = failed + ".*causal-conv1d 1.5.2.*torch's conv1d"
    with pytest.warns(RuntimeWarning, match=expected):
        assert conv.usable_kernel(CPU) is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert conv.usable_kernel(CPU) is None


def test_forcing_mamba_ssm_turns_the_failure_into_an_error(kernel_packages, cuda_order_on_cpu,
                                                           monkeypatch):
    kernel_packages(mamba_ssm='2.2.4', causal_conv1d='1.4.0', conv_binding='1.5.2',
                    scan_fault='wrong')
    monkeypatch.setenv(BACKEND_ENV, 'mamba_ssm')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(RuntimeError, match=r'(?s)mamba_ssm cannot run this call: '
                           r"mamba_ssm's selective scan .* computed something else.*"
                           r'Installed: mamba-ssm 2.2.4'):
            scan_backend(cuda_order_on_cpu)
        with pytest.raises(RuntimeError, match='upstream CUDA kernels.*incompatible function'):
            conv.usable_kernel(CPU)


def test_the_mixer_runs_through_a_verified_stand_in(kernel_packages, monkeypatch):
    """The forced mamba_ssm path, through the real-source stand-in, computes the native
    path's output and gradients."""
    kernel_packages(mamba_ssm='2.2.4')
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4)
    hidden = torch.randn(2, 11, 16, requires_grad=True)
    results = []
    for backend in ('torch', 'mamba_ssm'):
        monkeypatch.setenv(BACKEND_ENV, backend)
        hidden.grad = None
        mixer.zero_grad()
        mixer(hidden).square().sum().backward()
        results.append([hidden.grad.clone()] + [p.grad.clone() for p in mixer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
