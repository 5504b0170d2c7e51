"""The compiled CPU selective scan: the kernel is built, it agrees with the PyTorch scan at
Vim-S sizes, its dtype handling, dispatch and fallback.

Values and gradients against the reference (layouts, options, lengths across the 32-step
checkpoints, strides): tests/test_scan_conformance.py.
"""
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_scan_matches_reference, scan_inputs

from mmshufflemamba.ops import BACKEND_ENV, selective_scan, selective_scan_cpu, selective_scan_torch
from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel

if os.environ.get(BACKEND_ENV, 'auto') not in ('auto', 'compiled'):
    pytest.skip(f'{BACKEND_ENV}={os.environ[BACKEND_ENV]}: the compiled scan is not in use',
                allow_module_level=True)


def test_kernel_is_built():
    # Not a skip: the install builds the kernel, so a missing one is a failure here.
    assert load_cpu_kernel() is not None, 'run `python -m mmshufflemamba.ops.build --verbose`'


# The scan runs lane groups of channels (8 in float64, 16 in float32): several per row, a
# partial last one, groups of channels narrower than a lane group (B and C broadcast per
# group), B or C shared over time (read per lane); lengths around the chunk size the kernel
# exports. float32 with 16 states is the AVX-512 path, whose backward goes by blocks of
# states; float64 and the other state sizes run the generic loops.
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32], ids=['float64', 'float32'])
@pytest.mark.parametrize('B_kind,C_kind,channels,state,groups', [
    ('group', 'group', 20, 16, 4), ('var', 'shared', 20, 5, 2), ('group', 'var', 24, 16, 3),
    ('shared', 'group', 12, 3, 2), ('var', 'shared', 40, 16, 2), ('shared', 'var', 40, 16, 2),
    ('var', 'var', 40, 16, 1)])
def test_compiled_scan_across_lane_groups_and_chunks(B_kind, C_kind, channels, state, groups,
                                                      dtype):
    chunk = load_cpu_kernel().chunk
    for length in (chunk - 1, chunk, chunk + 1, 2 * chunk + 3):
        inputs = scan_inputs(2, channels, state, length, B_kind, C_kind, groups=groups,
                             dtype=dtype)
        assert_scan_matches_reference(selective_scan_cpu, inputs)


def test_an_empty_batch_runs():
    """Batch 0: empty outputs and zero gradients (the kernel's task count divided by the
    batch, and the process died of SIGFPE)."""
    u = torch.randn(0, 8, 5, requires_grad=True)
    delta = torch.randn(0, 8, 5, requires_grad=True)
    A = (-torch.rand(8, 4)).requires_grad_()
    B, C = torch.randn(0, 4, 5), torch.randn(0, 4, 5)
    out = selective_scan_cpu(u, delta, A, B, C, torch.ones(8), None, None, True)
    assert out.shape == (0, 8, 5)
    out.sum().backward()
    assert u.grad.shape == u.shape and torch.equal(A.grad, torch.zeros_like(A))


def test_compiled_and_pytorch_scans_agree_at_vim_s_sizes_in_float32():
    """Vim-S: d_inner 768, d_state 16, 197 tokens, batch 2, float32.

    Tolerance: 1e-5 of the largest magnitude of each compared tensor (both paths are
    about 2e-7 .. 1e-6 from a float64 computation).
    """
    g = torch.Generator().manual_seed(0)
    batch, channels, state, length = 2, 768, 16, 197

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    inputs = dict(u=leaf(batch, channels, length), delta=leaf(batch, channels, length, scale=0.5),
                  A=(-torch.exp(torch.randn(channels, state, generator=g) * 0.3)).requires_grad_(),
                  B=leaf(batch, state, length), C=leaf(batch, state, length), D=leaf(channels),
                  z=leaf(batch, channels, length), delta_bias=leaf(channels, scale=0.1))
    weight = torch.randn(batch, channels, length, generator=g)
    results = []
    for fn in (selective_scan_cpu, selective_scan_torch):
        out = fn(**inputs, delta_softplus=True)
        results.append([out, *torch.autograd.grad((out * weight).sum(), list(inputs.values()))])
    for name, a, b in zip(['out', *inputs], *results):
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err < 1e-5, f'{name}: relative difference {err:.2e}'


def test_compiled_scan_low_precision_inputs_compute_in_float32():
    inputs = scan_inputs(1, 4, 16, 20, dtype=torch.float32)
    low = {k: v.detach().to(torch.bfloat16) for k, v in inputs.items()}
    out = selective_scan_cpu(**low, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    ref = selective_scan_cpu(**{k: v.float() for k, v in low.items()}, delta_softplus=True)
    torch.testing.assert_close(out, ref.to(torch.bfloat16))  # only the output is rounded
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out32 = selective_scan_cpu(**{k: v.detach() for k, v in inputs.items()},
                                   delta_softplus=True)
    assert out32.dtype == torch.float32


def test_entry_point_uses_compiled_scan_on_cpu():
    inputs = scan_inputs(1, 2, 3, 4)
    out = selective_scan(**inputs, delta_softplus=True)
    assert type(out.grad_fn).__name__ == '_CompiledScanBackward'


FALLBACK_SCRIPT = '''
import warnings
import torch
from mmshufflemamba.ops import selective_scan, selective_scan_reference
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(1, 3, 5, generator=g), torch.randn(1, 3, 5, generator=g)
A = -torch.rand(3, 2, generator=g) - 0.5
B, C = torch.randn(1, 2, 5, generator=g), torch.randn(1, 2, 5, generator=g)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    outs = [selective_scan(u, delta, A, B, C, delta_softplus=True) for _ in range(3)]
ref = selective_scan_reference(u, delta, A, B, C, delta_softplus=True)
assert all(torch.allclose(o, ref, atol=1e-6) for o in outs)
assert type(outs[0].grad_fn).__name__ != '_CompiledScanBackward'
messages = [str(w.message) for w in caught if 'selective scan' in str(w.message)]
print('WARNINGS', len(messages))
for m in messages:
    print(m)
'''


@pytest.mark.parametrize('case', ['no_compiler', 'switched_off'])
def test_falls_back_to_pytorch_scan(case, tmp_path):
    env = dict(os.environ, MMSHUFFLEMAMBA_BUILD_DIR=str(tmp_path / 'build'))
    if case == 'no_compiler':
        env.pop(BACKEND_ENV, None)  # auto
        env['CXX'] = str(tmp_path / 'no-such-c++')
    else:
        env[BACKEND_ENV] = 'torch'
    proc = subprocess.run([sys.executable, '-c', FALLBACK_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if case == 'no_compiler':  # one warning that says what happened and what to do
        assert 'WARNINGS 1' in proc.stdout, proc.stdout
        assert 'could not build its compiled CPU selective scan' in proc.stdout
        assert 'python -m mmshufflemamba.ops.build' in proc.stdout
    else:
        assert 'WARNINGS 0' in proc.stdout, proc.stdout


@pytest.mark.slow
def test_the_avx2_build_passes_the_kernel_tests():
    """CPUs without AVX-512 get the kernel built for AVX2, without the AVX-512 intrinsics
    (the generic loops run instead). With torch's dispatch set to AVX2 the kernel builds
    that way, and the kernel tests pass with it."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY='avx2')
    tests = [os.path.join(os.path.dirname(__file__), name)
             for name in ('test_ops_bimamba.py', 'test_ops_scan_cpu.py')]
    script = ('import sys, pytest\n'
              'from mmshufflemamba.ops.cpu_kernel import build_directory\n'
              'print("BUILD", build_directory(), flush=True)\n'
              f'sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-n", "0", "-m", '
              f'"not slow", *{tests!r}]))\n')
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert '-avx2-' in proc.stdout.split('BUILD', 1)[-1].splitlines()[0], proc.stdout[:2000]
    assert ' passed' in proc.stdout and 'failed' not in proc.stdout, proc.stdout[-2000:]
