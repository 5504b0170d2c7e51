"""The Triton selective scan, run on CPU by Triton's interpreter: what is particular to it
(channel blocks within B/C groups, low-precision inputs, the saved checkpoints, the grid,
the interpreter switch, its own input checks, importing without Triton).

Values and gradients of every input against the reference, across the default 32-step
chunks, layouts, options, dtypes, strides and the last state:
tests/test_scan_conformance.py.

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a kernel. Every test here sets
it (autouse fixture) and the launcher decorates, or re-decorates, its kernels for the mode
it finds at the call, so neither the order in which pytest collects modules nor an earlier
import of the kernels matters.

The tests here use chunks of 4 steps and blocks of 2 channels to cross several chunk and
channel-block boundaries with tiny (fast to interpret) shapes.
"""
import importlib
import subprocess
import sys

import pytest
import torch
from helpers import assert_scan_matches_reference, scan_inputs, triton_scan_with_tiles

from mmshufflemamba.ops.triton_scan import _Tiling, selective_scan_triton, triton_available

triton = pytest.importorskip('triton', reason='Triton is not installed')
if not hasattr(triton, 'knobs'):
    pytest.skip(f'Triton {triton.__version__} is older than 3.4 (no triton.knobs)',
                allow_module_level=True)

CHUNK, BLOCK_D = 4, 2


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')


def tiled(chunk=CHUNK, block_d=BLOCK_D):
    """The Triton scan with this file's small tiles (or those given)."""
    return triton_scan_with_tiles(chunk, block_d)


@pytest.mark.parametrize('channels,groups,block_d', [(6, 2, 2), (6, 3, 4), (8, 2, 8)])
def test_triton_scan_groups_and_channel_blocks(channels, groups, block_d):
    # 3 channels per group force blocks of 1; 2 per group halve a block of 4; 4 one of 8.
    inputs = scan_inputs(2, channels, 2, 6, 'group', 'group', groups=groups)
    assert_scan_matches_reference(tiled(block_d=block_d), inputs)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_triton_scan_low_precision_inputs_keep_a_float32_state(dtype):
    """bf16 / fp16 inputs are read as they are and computed in float32: results are those
    of the float32 scan of the same values, rounded once.

    Parameter gradients (partial sums added and rounded by torch) are equal exactly.
    Tensors the kernels store in the low precision (y and the gradients of u, delta, z)
    are within one step of it (below the smallest normal number, one step of the
    subnormals): the interpreter truncates float32 to bf16 (GPUs round to nearest).
    """
    inputs = scan_inputs(1, 4, 3, 9, 'var', 'group', dtype=torch.float32)
    low = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
    high = {k: v.detach().float().requires_grad_() for k, v in low.items()}
    out, ref = (tiled()(**x, delta_softplus=True) for x in (low, high))
    assert out.dtype == dtype
    step = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, rtol=step, atol=0)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = torch.autograd.grad((out * weight).sum(), list(low.values()))
    want = torch.autograd.grad((ref * weight.float()).sum(), list(high.values()))
    for name, a, b in zip(low, got, want):
        assert a.dtype == dtype, name
        if name in ('u', 'delta', 'z'):
            torch.testing.assert_close(a.float(), b, rtol=step,
                                       atol=torch.finfo(dtype).smallest_normal * step,
                                       msg=f'grad of {name}')
        else:
            torch.testing.assert_close(a, b.to(dtype), rtol=0, atol=0, msg=f'grad of {name}')


def test_backward_keeps_only_chunk_checkpoints():
    batch, channels, state, length = 2, 3, 2, 9
    inputs = scan_inputs(batch, channels, state, length)
    out = tiled()(**inputs, delta_softplus=True)
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
    assert_scan_matches_reference(tiled(), scan_inputs(1, 2, 2, 5))
    assert triton_scan_kernels.INTERPRETED


def test_triton_scan_rejects_bad_inputs(monkeypatch):
    inputs = scan_inputs(1, 4, 3, 6)
    with pytest.raises(ValueError, match='z must have shape'):
        selective_scan_triton(**dict(inputs, z=inputs['z'][..., :3]))
    with pytest.raises(ValueError, match='D must have shape'):
        selective_scan_triton(**dict(inputs, D=inputs['D'][:2]))
    with pytest.raises(ValueError, match='powers of two'):
        tiled(chunk=6)(**inputs)
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
