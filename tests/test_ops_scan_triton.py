"""The Triton selective scan, run on CPU by Triton's interpreter: values and gradients of
every input against the sequential definition, across chunk boundaries, B/C layouts,
optional inputs and dtypes.

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a kernel. Every test here sets
it (autouse fixture) and the launcher decorates, or re-decorates, its kernels for the mode
it finds at the call, so neither the order in which pytest collects modules nor an earlier
import of the kernels matters.

Most tests use chunks of 4 steps and blocks of 2 channels to cross several chunk and
channel-block boundaries with tiny (fast to interpret) shapes.
"""
import importlib
import subprocess
import sys

import pytest
import torch
from test_ops_scan import assert_matches, make_inputs, sequential_scan

from mmshufflemamba.ops import selective_scan_reference
from mmshufflemamba.ops.triton_scan import (_selective_scan_triton, _Tiling,
                                            selective_scan_triton, triton_available)

triton = pytest.importorskip('triton', reason='Triton is not installed')
if not hasattr(triton, 'knobs'):
    pytest.skip(f'Triton {triton.__version__} is older than 3.4 (no triton.knobs)',
                allow_module_level=True)

CHUNK, BLOCK_D = 4, 2


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')


def scan(inputs, delta_softplus=True, return_last_state=False, chunk=CHUNK, block_d=BLOCK_D):
    return _selective_scan_triton(**inputs, delta_softplus=delta_softplus,
                                  return_last_state=return_last_state, chunk=chunk,
                                  block_d=block_d)


# (batch, channels, state, length), with chunks of 4: several chunks with a partial last
# one, L = 1 (and a partial channel block), odd L, L = chunk with d_state 1, L = chunk + 1,
# L = 2 * chunk + 1 with batch 1, and d_state 16 over three full chunks.
SHAPES = [(2, 4, 3, 9), (1, 3, 2, 1), (1, 5, 4, 7), (3, 2, 1, 4), (2, 3, 2, 5), (1, 4, 3, 9),
          (1, 2, 16, 12)]


@pytest.mark.parametrize('shape', SHAPES)
def test_triton_scan_equals_sequential_definition(shape):
    inputs = make_inputs(*shape)
    assert_matches(scan(inputs), sequential_scan(*inputs.values(), True), inputs)


@pytest.mark.parametrize('B_kind,C_kind', [('shared', 'var'), ('var', 'shared'),
                                           ('group', 'group'), ('shared', 'shared'),
                                           ('group', 'var'), ('var', 'group')])
@pytest.mark.parametrize('softplus', [True, False])
def test_triton_scan_matches_reference_for_every_layout(B_kind, C_kind, softplus):
    inputs = make_inputs(2, 4, 3, 9, B_kind, C_kind)
    if not softplus:  # keep delta positive so the recurrence stays stable
        inputs['delta'] = inputs['delta'].detach().abs().requires_grad_()
    assert_matches(scan(inputs, softplus),
                   selective_scan_reference(**inputs, delta_softplus=softplus), inputs)


@pytest.mark.parametrize('channels,groups,block_d', [(6, 2, 2), (6, 3, 4), (8, 2, 8)])
def test_triton_scan_groups_and_channel_blocks(channels, groups, block_d):
    # 3 channels per group force blocks of 1; 2 per group halve a block of 4; 4 one of 8.
    inputs = make_inputs(2, channels, 2, 6, 'group', 'group', groups=groups)
    assert_matches(scan(inputs, block_d=block_d),
                   selective_scan_reference(**inputs, delta_softplus=True), inputs)


@pytest.mark.parametrize('absent', [('D', ), ('z', ), ('delta_bias', ),
                                    ('D', 'z', 'delta_bias')])
@pytest.mark.parametrize('B_kind,C_kind', [('var', 'var'), ('shared', 'group')])
def test_triton_scan_optional_inputs_absent(absent, B_kind, C_kind):
    inputs = make_inputs(2, 4, 2, 9, B_kind, C_kind)
    inputs.update(dict.fromkeys(absent))
    assert_matches(scan(inputs), selective_scan_reference(**inputs, delta_softplus=True),
                   inputs)


@pytest.mark.parametrize('length', [8, 9])
@pytest.mark.parametrize('use_output', [True, False])
def test_triton_scan_last_state_and_its_gradient(length, use_output):
    inputs = make_inputs(2, 3, 2, length, 'var', 'shared')
    y, last = scan(inputs, return_last_state=True)
    y_ref, last_ref = selective_scan_reference(**inputs, delta_softplus=True,
                                               return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(1)
    w_y, w_last = (torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (y, last))

    def loss(y, last):
        return (last * w_last).sum() + ((y * w_y).sum() if use_output else 0)

    got = torch.autograd.grad(loss(y, last), list(inputs.values()))
    want = torch.autograd.grad(loss(y_ref, last_ref), list(inputs.values()), allow_unused=True)
    for (name, x), a, b in zip(inputs.items(), got, want):
        b = torch.zeros_like(x) if b is None else b  # the last state ignores C, D and z
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f'grad of {name}')


@pytest.mark.parametrize('B_kind,C_kind', [('var', 'var'), ('group', 'shared')])
def test_triton_scan_float32(B_kind, C_kind):
    """float32 against a float64 computation: within 1e-5 of each tensor's largest value."""
    inputs = make_inputs(2, 4, 3, 9, B_kind, C_kind, dtype=torch.float32)
    inputs64 = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    out = scan(inputs)
    assert out.dtype == torch.float32
    expected = selective_scan_reference(**inputs64, delta_softplus=True)
    weight = torch.randn_like(expected)
    got = torch.autograd.grad((out * weight.float()).sum(), list(inputs.values()))
    want = torch.autograd.grad((expected * weight).sum(), list(inputs64.values()))
    for name, a, b in zip(['out', *inputs], [out, *got], [expected, *want]):
        assert a.dtype == torch.float32, name
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err < 1e-5, f'{name}: relative difference {err:.2e}'


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_triton_scan_low_precision_inputs_keep_a_float32_state(dtype):
    """bf16 / fp16 inputs are read as they are and computed in float32: results are those
    of the float32 scan of the same values, rounded once.

    Parameter gradients (partial sums added and rounded by torch) are equal exactly.
    Tensors the kernels store in the low precision (y and the gradients of u, delta, z)
    are within one step of it: the interpreter truncates float32 to bf16 (GPUs round to
    nearest).
    """
    inputs = make_inputs(1, 4, 3, 9, 'var', 'group', dtype=torch.float32)
    low = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
    high = {k: v.detach().float().requires_grad_() for k, v in low.items()}
    out, ref = scan(low), scan(high)
    assert out.dtype == dtype
    step = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, rtol=step, atol=0)
    weight = torch.randn(out.shape).to(dtype)
    got = torch.autograd.grad((out * weight).sum(), list(low.values()))
    want = torch.autograd.grad((ref * weight.float()).sum(), list(high.values()))
    for name, a, b in zip(low, got, want):
        assert a.dtype == dtype, name
        if name in ('u', 'delta', 'z'):
            torch.testing.assert_close(a.float(), b, rtol=step, atol=0, msg=f'grad of {name}')
        else:
            torch.testing.assert_close(a, b.to(dtype), rtol=0, atol=0, msg=f'grad of {name}')


def test_triton_scan_softplus_tails_and_non_contiguous_inputs():
    # delta + bias beyond +-20: softplus is linear above 20 and exp(x) (via log1p) far below.
    inputs = make_inputs(2, 4, 3, 9)
    with torch.no_grad():
        inputs['delta'][:, :2, ::2] *= 30
    # u, delta and B as views of time-major tensors.
    inputs.update({k: inputs[k].detach().transpose(-1, -2).contiguous().transpose(-1, -2)
                   .requires_grad_() for k in ('u', 'delta', 'B')})
    assert not inputs['u'].is_contiguous()
    assert_matches(scan(inputs), selective_scan_reference(**inputs, delta_softplus=True),
                   inputs)


def test_public_entry_uses_default_chunks():
    # L = 40 crosses the default 32-step chunk; 5 channels leave a partial block of 4.
    inputs = make_inputs(1, 5, 2, 40, 'var', 'shared')
    assert_matches(selective_scan_triton(**inputs, delta_softplus=True),
                   selective_scan_reference(**inputs, delta_softplus=True), inputs)


def test_backward_keeps_only_chunk_checkpoints():
    batch, channels, state, length = 2, 3, 2, 9
    inputs = make_inputs(batch, channels, state, length)
    out = scan(inputs)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    checkpoints = (batch, channels, -(-length // CHUNK), state)
    assert any(t.shape == checkpoints for t in saved)
    assert max(t.numel() for t in saved) == batch * channels * length  # no (b, D, L, N)


def test_grid_is_parallel_along_the_sequence():
    # ShuffleMamba-S at 512 px, batch 2: (b, D, L) = (2, 768, 1025), N = 16.
    u, A = torch.empty(2, 768, 1025, device='meta'), torch.empty(768, 16, device='meta')
    tiling = _Tiling.of(u, A, (), chunk=32, block_d=4)
    assert tiling.chunk_grid() == (192, 33, 2)  # 12672 programs, vs 2 * 768 / 4 = 384
    assert tiling.carry_grid() == (192, 2)  # each walks 33 chunks, not 1025 steps


def test_kernels_follow_the_interpreter_switch(monkeypatch):
    from mmshufflemamba.ops import triton_scan_kernels
    monkeypatch.setenv('TRITON_INTERPRET', '0')  # as if imported before the switch
    assert not importlib.reload(triton_scan_kernels).INTERPRETED
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    inputs = make_inputs(1, 2, 2, 5)
    assert_matches(scan(inputs), sequential_scan(*inputs.values(), True), inputs)
    assert triton_scan_kernels.INTERPRETED


def test_triton_scan_rejects_bad_inputs(monkeypatch):
    inputs = make_inputs(1, 4, 3, 6)
    with pytest.raises(ValueError, match='A must have shape'):
        selective_scan_triton(**dict(inputs, A=inputs['A'][:2]))
    with pytest.raises(ValueError, match='groups'):
        selective_scan_triton(**dict(inputs, B=torch.randn(1, 3, 3, 6, dtype=torch.float64)))
    with pytest.raises(ValueError, match='z must have shape'):
        selective_scan_triton(**dict(inputs, z=inputs['z'][..., :3]))
    with pytest.raises(ValueError, match='D must have shape'):
        selective_scan_triton(**dict(inputs, D=inputs['D'][:2]))
    with pytest.raises(ValueError, match='powers of two'):
        scan(inputs, chunk=6)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA tensors'):
            selective_scan_triton(**inputs)
    else:
        assert not triton_available()
        with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
            selective_scan_triton(**inputs)


WITHOUT_TRITON = """
import sys
sys.modules['triton'] = None  # import triton now raises ImportError
import torch
from mmshufflemamba.ops.triton_scan import selective_scan_triton, triton_available
assert not triton_available()
x = torch.randn(1, 2, 3)
try:
    selective_scan_triton(x, x, -torch.ones(2, 1), torch.randn(2, 1), torch.randn(2, 1))
except RuntimeError as e:
    print(e)
"""


def test_module_imports_without_triton():
    proc = subprocess.run([sys.executable, '-c', WITHOUT_TRITON], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'needs Triton' in proc.stdout
