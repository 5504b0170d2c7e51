"""Exporting: TorchScript-based exporters are refused (they would write a model without the
scan); tools/deployment/export_onnx.py writes an ONNX model with dynamic sizes that
onnxruntime runs as PyTorch does, and fails loudly when a part of the model was exported
for one size only. (The exportable scan against the reference:
tests/test_scan_conformance.py.)"""
import os
import re

import pytest
import torch
from helpers import CLS, UPERNET, run_tool, write_child_config

from mmshufflemamba.models import ShuffleMamba
from mmshufflemamba.ops import BACKEND_ENV

SMALL = dict(arch=dict(embed_dims=16, num_layers=2), img_size=32, mixer_cfg=dict(d_state=4),
             cls_token=None, out_type='featmap')


@pytest.mark.parametrize('backend', ['auto', 'torch'])  # the fused kernel; the PyTorch scan
def test_torchscript_exporters_are_refused(monkeypatch, tmp_path, backend):
    monkeypatch.setenv(BACKEND_ENV, backend)
    model = ShuffleMamba(**SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match='cannot represent the selective scan.*export_onnx'):
        torch.onnx.export(model, (x, ), str(tmp_path / 'legacy.onnx'), dynamo=False)
    with pytest.raises(RuntimeError, match='TorchScript tracing'):
        torch.jit.trace(model, (x, ))


def checked_sizes(stdout: str):
    """(size, max difference, outputs' scale) of each onnxruntime check the tool printed."""
    return [(m[0], float(m[1]), float(m[2])) for m in re.findall(
        r'^(\d+x\d+): .* max \|onnxruntime - pytorch\| = (\S+) \(outputs up to (\S+)\)',
        stdout, re.M)]


@pytest.mark.slow
def test_export_tool_segmentation_and_classification(tmp_path, untrained_checkpoints):
    pytest.importorskip('onnxruntime')
    seg = write_child_config(tmp_path / 'seg.py', UPERNET, '')
    cls = write_child_config(tmp_path / 'cls.py', CLS, '')
    for task in ('seg', 'cls'):
        os.symlink(untrained_checkpoints[task], tmp_path / f'{task}.pth')
    # the backbone (with its pyramid) at the export size and another one
    proc = run_tool('tools/deployment/export_onnx.py', seg, str(tmp_path / 'seg.pth'),
                    '--out', str(tmp_path / 'backbone.onnx'))
    checks = checked_sizes(proc.stdout)
    assert [c[0] for c in checks] == ['64x64', '112x144'], proc.stdout
    assert all(diff < 1e-4 * scale for _, diff, scale in checks), checks
    assert 'in training mode' not in proc.stdout + proc.stderr  # the model is in eval mode
    # a whole classifier, dynamic sizes
    proc = run_tool('tools/deployment/export_onnx.py', cls, str(tmp_path / 'cls.pth'),
                    '--part', 'model', '--out', str(tmp_path / 'cls.onnx'))
    assert len(checked_sizes(proc.stdout)) == 2
    # a whole segmentor: UPerHead's pooling is exported for one size, which the second
    # check finds; --static exports it correctly for that size
    # a failed check writes nothing: an earlier good export at the same path stays
    good = tmp_path / 'backbone.onnx'
    before = good.read_bytes()
    proc = run_tool('tools/deployment/export_onnx.py', seg, str(tmp_path / 'seg.pth'),
                    '--part', 'model', '--out', str(good), check=False)
    assert proc.returncode != 0 and 'use --static' in proc.stderr
    assert f'{good} is unchanged' in proc.stderr and good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob('*.onnx*')) == ['backbone.onnx', 'cls.onnx']
    proc = run_tool('tools/deployment/export_onnx.py', seg, str(tmp_path / 'seg.pth'),
                    '--part', 'model', '--static', '--shape', '112', '144', '--out',
                    str(tmp_path / 'seg_static.onnx'))
    (size, diff, scale), = checked_sizes(proc.stdout)
    assert size == '112x144' and diff < 1e-4 * scale


def test_export_tool_names_the_extra_when_onnx_is_missing(tmp_path):
    """Without onnx/onnxscript/onnxruntime the tool says which are missing and names the
    install extra, before building anything."""
    blocker = tmp_path / 'sitecustomize.py'  # hides the three packages from this process
    blocker.write_text('import sys\n'  # as if not installed: import fails, find_spec is None
                       'sys.modules.update(onnx=None, onnxscript=None, onnxruntime=None)\n')
    proc = run_tool('tools/deployment/export_onnx.py', CLS, 'unused.pth', check=False,
                    env=dict(PYTHONPATH=os.pathsep.join(
                        filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')]))))
    assert proc.returncode != 0, proc.stdout
    assert 'needs onnx, onnxscript, onnxruntime' in proc.stderr, proc.stderr
    assert 'pip install -e ".[export]"' in proc.stderr, proc.stderr
