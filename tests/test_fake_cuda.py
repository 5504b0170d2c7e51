"""Device placement on a GPU this machine does not have: models moved to ``'cuda'`` inside
torch's ``FakeTensorMode`` run their forward on fake CUDA tensors (shapes and devices, no
values), where a tensor made on the CPU and mixed with CUDA ones raises. Training mode,
shuffle on: the plan is drawn on the host and moved to the tokens' device."""
import pytest
import torch
from helpers import MASK_RCNN, ROOT, UPERNET
from torch._subclasses.fake_tensor import FakeTensorMode

from mmshufflemamba.models import ShuffleMamba
from mmshufflemamba.models.layers import LayerwiseShuffle
from mmshufflemamba.utils import build_model_from_config

SMALL = dict(arch=dict(embed_dims=32, num_layers=4), img_size=64, mixer_cfg=dict(d_state=4),
             shuffle_rate=1.0)
LAYOUTS = {
    'head class token': dict(cls_token='head', out_type='cls_token'),
    'middle class token': dict(cls_token='middle', out_type='cls_token'),
    'mean pooling': dict(cls_token=None, out_type='avg_featmap'),
    'registers': dict(cls_token=None, num_registers=4, out_type='registers'),
    'pyramid': dict(cls_token=None, out_type='featmap', out_indices=(0, 1, 2, 3),
                    out_scales=(4, 2, 1, 0.5)),
}


def flatten(outputs):
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for out in outputs for t in flatten(out)]


# CUDA tensors without mamba_ssm or a GPU for Triton: the PyTorch scan, with its warning
pytestmark = pytest.mark.filterwarnings('ignore:mmshufflemamba. no fast selective scan')


@pytest.fixture
def fake_cuda():
    """A fake mode (to enter once the model is built) that takes the real parameters of
    the model it moves to 'cuda'."""
    return FakeTensorMode(allow_non_fake_inputs=True)


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_backbone_trains_on_a_fake_gpu(fake_cuda, layout):
    model = ShuffleMamba(**SMALL, **LAYOUTS[layout]).train()
    with fake_cuda:
        model = model.to('cuda')
        outputs = flatten(model(torch.randn(2, 3, 64, 64, device='cuda')))
    assert outputs and all(out.device.type == 'cuda' for out in outputs), \
        [out.device for out in outputs]
    if layout == 'pyramid':
        assert [tuple(out.shape[2:]) for out in outputs] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_a_cpu_tensor_mixed_with_cuda_ones_is_caught(fake_cuda):
    """What the tests above would catch: a permutation left on the CPU."""
    perm = torch.randperm(5)  # CPU

    def block(h, r):
        return h, h if r is None else r + h

    with fake_cuda:
        hidden = torch.randn(2, 5, 8, device='cuda')
        with pytest.raises(RuntimeError, match='cpu'):
            LayerwiseShuffle.apply_permuted(block, perm, hidden, hidden)
        out, _ = LayerwiseShuffle.apply_permuted(block, perm.to('cuda'), hidden, hidden)
    assert out.device.type == 'cuda'


def build(config):
    """The config's model in training mode with the shuffle on in every layer but the first."""
    model, _ = build_model_from_config(f'{ROOT}/{config}', {'model.backbone.shuffle_rate': 1.0})
    model.init_weights()
    return model.train()


def test_toy_upernet_trains_on_a_fake_gpu(fake_cuda):
    model = build(UPERNET)
    with fake_cuda:
        model = model.to('cuda')
        logits = model(torch.randn(2, 3, 64, 64, device='cuda'), mode='tensor')
    assert logits.device.type == 'cuda' and logits.shape[:2] == (2, 5)


def test_toy_mask_rcnn_trains_on_a_fake_gpu(fake_cuda):
    """Backbone, FPN and RPN head: the dense part (the RoI heads' sampling reads values)."""
    model = build(MASK_RCNN)
    with fake_cuda:
        model = model.to('cuda')
        features = model.extract_feat(torch.randn(2, 3, 128, 128, device='cuda'))
        scores, deltas = model.rpn_head(features)
    outputs = flatten(features) + flatten(scores) + flatten(deltas)
    assert len(features) == 5 and all(out.device.type == 'cuda' for out in outputs)
