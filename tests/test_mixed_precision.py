"""bfloat16 autocast: the projections' GEMMs run in bf16, the scan keeps fp32 state, the
residual stream honours residual_in_fp32, and training through the tools gives finite
losses and gradients."""
import math

import pytest
import torch
from helpers import data_overrides, logged_scalars, run_tool, write_child_config

from mmshufflemamba.datasets import make_toy_ade20k, make_toy_classification
from mmshufflemamba.models import MambaBlock


@pytest.mark.parametrize('residual_in_fp32', [True, False])
def test_block_residual_dtype_under_autocast(residual_in_fp32):
    block = MambaBlock(16, residual_in_fp32=residual_in_fp32, mixer_cfg=dict(d_state=4))
    x = torch.randn(2, 5, 16).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        hidden, residual = block(x)
        hidden, residual = block(hidden, residual)
    assert hidden.dtype == torch.bfloat16  # the mixer's projections run in bf16
    assert residual.dtype == (torch.float32 if residual_in_fp32 else torch.bfloat16)
    assert torch.isfinite(hidden.float()).all()


@pytest.mark.parametrize('path', ['fused', 'pytorch'])
def test_scan_state_stays_float32_under_autocast(monkeypatch, path):
    import importlib
    seen = {}
    if path == 'fused':  # the CPU mixer's fused kernel: spy on what its scan receives
        bimamba = importlib.import_module('mmshufflemamba.ops.bimamba')
        kernel = bimamba.load_cpu_kernel()

        class Spy:
            def __getattr__(self, name):
                return getattr(kernel, name)

            def bimamba_scan_forward(self, xz, u_f, u_b, dt_w_f, dt_w_b, x_dbl_f, *rest):
                # u, x_proj's output (the step sizes' inputs), A
                seen['dtypes'] = (u_f.dtype, x_dbl_f.dtype, rest[1].dtype)
                return kernel.bimamba_scan_forward(xz, u_f, u_b, dt_w_f, dt_w_b, x_dbl_f, *rest)

        monkeypatch.setattr(bimamba, 'load_cpu_kernel', Spy)
    else:  # the unfused mixer with the PyTorch scan
        from mmshufflemamba.ops import BACKEND_ENV
        monkeypatch.setenv(BACKEND_ENV, 'torch')
        torch_scan = importlib.import_module('mmshufflemamba.ops.torch_scan')
        core_cls = torch_scan._SelectiveScanCore
        core = core_cls.forward

        def spy(ctx, delta, u, A, *rest):
            seen['dtypes'] = (u.dtype, delta.dtype, A.dtype)
            return core(ctx, delta, u, A, *rest)

        monkeypatch.setattr(core_cls, 'forward', staticmethod(spy))
    block = MambaBlock(16, mixer_cfg=dict(d_state=4))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        hidden, _ = block(torch.randn(2, 5, 16))
    assert seen['dtypes'] == (torch.float32, ) * 3
    assert hidden.dtype == torch.bfloat16 and torch.isfinite(hidden.float()).all()


GEMMS = ('mm', 'addmm', 'bmm', 'baddbmm')


def test_gemms_run_in_bf16_and_the_fused_op_reads_bf16_xz_under_autocast():
    """What ``--amp`` runs on CPU, seen below autocast (a dispatch mode): in a training
    step of a block on the fused path, every GEMM outside the fused op (``in_proj``,
    forward and backward) gets bf16 operands; the fused op (both directions' convs,
    ``x_proj``/``dt_proj`` and scans, then ``out_proj``) gets ``in_proj``'s bf16 output
    ``xz`` as it is, fp32 weights and ``out_proj``'s weight in bf16 (its GEMMs run inside
    the op, in that dtype), so nothing copies ``xz`` to fp32, and ``xz``'s gradient comes
    back in bf16."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.calls.append((func.overloadpacket.__name__, func.namespace,
                               [a.dtype for a in args if isinstance(a, torch.Tensor)],
                               [(o.shape, o.dtype) for o in outs if isinstance(o, torch.Tensor)]))
            return out

    block = MambaBlock(16, mixer_cfg=dict(d_state=4))
    assert block.mixer.fused(torch.randn(1, 5, 32))
    x = torch.randn(2, 5, 16, requires_grad=True)
    with Record() as record:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            hidden, residual = block(x)
        (hidden.float().sum() + residual.float().sum()).backward()
    gemms = [set(dtypes) for name, space, dtypes, _ in record.calls if name in GEMMS]
    assert len(gemms) >= 3  # in_proj: forward, and two in the backward pass
    assert all(dtypes == {torch.bfloat16} for dtypes in gemms), gemms
    fused = {name: dtypes for name, space, dtypes, _ in record.calls
             if space == 'mmshufflemamba'}
    assert sorted(fused) == ['bimamba_inner', 'bimamba_inner_backward']
    # bimamba_inner(xz, 14 weights, out_proj's weight (no bias in Vim));
    # bimamba_inner_backward(d out, xz, 14 weights, out_proj's weight, 4 saved)
    assert fused['bimamba_inner'] == [torch.bfloat16] + [torch.float32] * 14 + [torch.bfloat16]
    assert fused['bimamba_inner_backward'] == (
        [torch.bfloat16, torch.bfloat16] + [torch.float32] * 14 + [torch.bfloat16] +
        [torch.float32] * 4)
    xz_shape = (2, 5, 2 * block.mixer.d_inner)
    made = [(name, dtype) for name, _, _, outs in record.calls for shape, dtype in outs
            if tuple(shape) == xz_shape]
    assert ('_to_copy', torch.float32) not in made, made  # no fp32 copy of xz
    assert ('bimamba_inner_backward', torch.bfloat16) in made, made  # dxz in xz's dtype


CASES = {
    'classifier': ('configs/shufflemamba/shufflemamba-toy_1xb32_toycls.py',
                   make_toy_classification),
    'upernet': ('configs/upernet/upernet_shufflemamba-toy_1xb8-300_toyade-64x64.py',
                make_toy_ade20k),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(CASES))
def test_bf16_training_is_finite(tmp_path, name):
    config, make = CASES[name]
    data = str(tmp_path / 'data')
    make(data)
    child = write_child_config(
        tmp_path / 'cfg.py', config,
        data_overrides(data) +
        'train_cfg = dict(max_iters=8, val_interval=1000)\n'
        # a clip that never bites, so that the gradient norm is logged
        'optim_wrapper = dict(clip_grad=dict(max_norm=1e9))\n'
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1000))\n')
    work_dir = str(tmp_path / 'work')
    proc = run_tool('tools/train.py', child, '--work-dir', work_dir, '--amp')
    assert 'AutocastOptimWrapper' in proc.stdout + proc.stderr
    records = [r for r in logged_scalars(work_dir)[-1] if 'loss' in r]
    assert len(records) == 8
    for r in records:
        assert math.isfinite(r['loss']) and math.isfinite(r['grad_norm']), r
