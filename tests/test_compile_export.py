"""torch.compile and torch.export see the CPU kernels as custom ops: no graph break on the
scan, an exportable eval backbone with dynamic sizes, and mmengine's compile=True."""
import pytest
import torch
from helpers import data_overrides, logged_scalars, run_tool, write_child_config

from mmshufflemamba.models import ShuffleMamba

SMALL = dict(arch=dict(embed_dims=32, num_layers=3), img_size=64, mixer_cfg=dict(d_state=8))


def test_compiled_eval_backbone_has_one_graph_and_matches_eager():
    torch.manual_seed(0)
    model = ShuffleMamba(**SMALL).eval()
    assert model.layers[0].mixer.fused(torch.zeros(1, 4, 32))  # the custom-op path
    x = torch.randn(2, 3, 64, 64)
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, [r.reason for r in explain.break_reasons]
    ops = {str(node.target) for graph in explain.graphs for node in graph.graph.nodes}
    assert 'mmshufflemamba.bimamba_inner' in ops  # the scan: one opaque op, no break
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x)[0], model(x)[0], rtol=1e-5,
                                   atol=1e-5)


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    model = ShuffleMamba(**SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for run in (model, torch.compile(model)):
        model.zero_grad()
        run(x)[0].square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(),
                                   msg=name)


@pytest.mark.parametrize('layout', [dict(cls_token=None, out_type='featmap'),
                                    dict(cls_token='middle'),
                                    dict(cls_token=None, num_registers=4,
                                         out_type='registers')])
def test_exported_eval_backbone_takes_other_sizes(layout):
    torch.manual_seed(0)
    model = ShuffleMamba(**SMALL, **layout).eval()
    Dim = torch.export.Dim
    exported = torch.export.export(
        model, (torch.randn(2, 3, 64, 64), ),
        dynamic_shapes=({0: Dim('batch', min=1, max=8), 2: 16 * Dim('h', min=2, max=32),
                         3: 16 * Dim('w', min=2, max=32)}, ))
    for shape in ((1, 3, 64, 64), (2, 3, 48, 80), (1, 3, 96, 32)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(x)[0], model(x)[0], rtol=1e-5,
                                       atol=1e-6)


@pytest.mark.slow
def test_mmengine_compile_trains_the_toy_config(tmp_path):
    from mmshufflemamba.datasets import make_toy_classification
    data = str(tmp_path / 'toy_cls')
    make_toy_classification(data, train_per_class=8, val_per_class=1)
    config = write_child_config(tmp_path / 'cls.py',
                                'configs/shufflemamba/shufflemamba-toy_1xb32_toycls.py',
                                data_overrides(data))
    work_dir = str(tmp_path / 'work')
    proc = run_tool('tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
                    'compile=True', 'train_cfg.max_iters=6', 'train_cfg.val_interval=6',
                    'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=6')
    assert "the model's forward is compiled" in proc.stdout + proc.stderr
    losses = [r['loss'] for r in logged_scalars(work_dir)[-1] if 'loss' in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
