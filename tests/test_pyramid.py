"""Multi-scale features from the plain backbone: shapes, strides, gradients."""
import pytest
import torch

from mmshufflemamba.models import ShuffleMamba

DENSE = dict(arch=dict(embed_dims=16, num_layers=4), img_size=64, patch_size=16,
             cls_token=None, out_type='featmap', mixer_cfg=dict(d_state=2))


@pytest.mark.parametrize('size', [(64, 64), (96, 64), (48, 80), (16, 16)])
@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (3, )])
def test_pyramid_strides(size, out_indices):
    model = ShuffleMamba(**DENSE, out_indices=out_indices, out_scales=(4, 2, 1, 0.5)).eval()
    outs = model(torch.randn(2, 3, *size))
    assert isinstance(outs, tuple) and len(outs) == 4
    for out, stride in zip(outs, (4, 8, 16, 32)):
        expected = tuple(-(-side // stride) for side in size)  # ceil for stride 32
        assert out.shape == (2, 16, *expected), (stride, out.shape)


@pytest.mark.parametrize('norm', ['LN2d', 'GN', 'BN'])
def test_every_level_reaches_every_layer_it_depends_on(norm):
    torch.manual_seed(0)
    for out_indices in [(3, ), (0, 1, 2, 3)]:
        model = ShuffleMamba(**DENSE, out_indices=out_indices, out_scales=(4, 2, 1, 0.5),
                             pyramid_norm=norm).train()
        x = torch.randn(2, 3, 64, 64)
        for level in range(4):
            model.zero_grad()
            model(x)[level].square().mean().backward()
            source = out_indices[0] if len(out_indices) == 1 else out_indices[level]
            for i, layer in enumerate(model.layers):
                grads = [p.grad for p in layer.parameters()]
                reached = all(g is not None and g.abs().sum() > 0 for g in grads)
                assert reached == (i <= source), (out_indices, level, i)
            assert model.patch_embed.proj.weight.grad.abs().sum() > 0
            for p in model.pyramid.resamplers[level].parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0


def test_pyramid_config_errors():
    with pytest.raises(ValueError, match="out_type='featmap'"):
        ShuffleMamba(**dict(DENSE, out_type='avg_featmap'), out_scales=(4, 2, 1, 0.5))
    with pytest.raises(ValueError, match='one out_indices entry per scale'):
        ShuffleMamba(**DENSE, out_indices=(1, 3), out_scales=(4, 2, 1, 0.5))
    with pytest.raises(ValueError, match='scales'):
        ShuffleMamba(**DENSE, out_indices=(3, ), out_scales=(3, ))
    with pytest.raises(ValueError, match='pyramid norm'):
        ShuffleMamba(**DENSE, out_scales=(1, ), pyramid_norm='IN')


@pytest.mark.parametrize('norm', ['LN2d', 'GN', 'BN'])
def test_every_level_is_normalised_whatever_the_residual_streams_scale(norm):
    """The maps of blocks before the last are the raw residual stream, whose scale is free
    (each block reads it through a scale-invariant norm). Scaled up a thousandfold, as the
    unbounded streams of a diverging toy Mask R-CNN were, the levels stay at unit scale:
    the neck never sees it."""
    torch.manual_seed(0)
    model = ShuffleMamba(**DENSE, out_indices=(0, 1, 2, 3), out_scales=(4, 2, 1, 0.5),
                         pyramid_norm=norm).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.patch_embed.proj.weight.mul_(1000)
        model.patch_embed.proj.bias.mul_(1000)
        model.pos_embed.mul_(1000)
        streams = model(x)
    for level, out in enumerate(streams):
        rms = out.square().mean().sqrt().item()
        assert 0.5 < rms < 2, (norm, level, rms)
