"""Loading classification weights into other backbones: layouts, norms, key reports."""
import pytest
import torch

from mmshufflemamba.models import ShuffleMamba
from mmshufflemamba.models.utils import fit_checkpoint, load_pretrained

BASE = dict(arch=dict(embed_dims=32, num_layers=3), img_size=32, patch_size=16,
            mixer_cfg=dict(d_state=4))


@pytest.mark.parametrize('layout', ['head', 'middle'])
def test_class_slot_dropped_for_dense_backbone(layout):
    src = ShuffleMamba(**BASE, cls_token=layout)
    dense = ShuffleMamba(**dict(BASE, img_size=64), cls_token=None, out_type='featmap',
                         ckpt_cls_token=layout)
    _, report = fit_checkpoint(src.state_dict(), dense.fit_target())
    dense.load_state_dict(src.state_dict())
    slot = 0 if layout == 'head' else 2
    patches = torch.cat([src.pos_embed[:, :slot], src.pos_embed[:, slot + 1:]], dim=1)
    expected = torch.nn.functional.interpolate(
        patches.reshape(1, 2, 2, 32).permute(0, 3, 1, 2), size=(4, 4), mode='bicubic',
        align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(dense.pos_embed, expected)
    assert report['dropped'][0] == 'cls_token'
    assert 'class-token slot' in report['dropped'][1]
    torch.testing.assert_close(dense.layers[2].mixer.A_log, src.layers[2].mixer.A_log)


def test_registers_dropped_for_a_backbone_without_them():
    src = ShuffleMamba(**BASE, cls_token=None, num_registers=3, out_type='registers')
    dst = ShuffleMamba(**dict(BASE, img_size=48), cls_token=None, out_type='featmap')
    _, report = fit_checkpoint(src.state_dict(), dst.fit_target())
    dst.load_state_dict(src.state_dict())
    assert report['dropped'] == ['register_tokens', 'pos_embed_reg']
    assert report['resized'] == ['pos_embed 2x2 -> 3x3 (bicubic)']


def test_class_slot_kept_between_same_layouts_and_every_resize_reported(caplog):
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine', log_level='INFO')
    src = ShuffleMamba(**BASE, cls_token='middle')
    dst = ShuffleMamba(**dict(BASE, img_size=48), cls_token='middle')
    _, report = fit_checkpoint(src.state_dict(), dst.fit_target())
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst.pos_embed[:, 4], src.pos_embed[:, 2])  # the class slot
    assert report == dict(dropped=[], resized=['pos_embed 2x2 -> 3x3 (bicubic)'])
    same = ShuffleMamba(**BASE, cls_token='middle')
    _, report = fit_checkpoint(src.state_dict(), same.fit_target())
    same.load_state_dict(src.state_dict())
    assert report == dict(dropped=[], resized=[])


def test_stride8_weights_load_into_a_stride16_model_with_a_reported_resize():
    """Vim-T+ weights (patch 16, stride 8: 27x27 at 224 px) into a stride-16 backbone:
    the conv has the same shape, so only the grid tells; the resize is named."""
    plus = ShuffleMamba(**dict(BASE, img_size=224), patch_stride=8, cls_token='middle')
    assert plus.patch_resolution == (27, 27) and plus.pos_embed.shape[1] == 27 * 27 + 1
    plain = ShuffleMamba(**dict(BASE, img_size=224), cls_token='middle')
    _, report = fit_checkpoint(plus.state_dict(), plain.fit_target())
    plain.load_state_dict(plus.state_dict())
    assert report['resized'] == ['pos_embed 27x27 -> 14x14 (bicubic)']
    # the class slot is read at 729 // 2 = 364 and written at 196 // 2 = 98
    torch.testing.assert_close(plain.pos_embed[:, 98], plus.pos_embed[:, 364])


@pytest.mark.parametrize('src_norm,dst_norm', [('LN', 'RMSNorm'), ('RMSNorm', 'LN')])
def test_norm_type_mismatch_is_refused(src_norm, dst_norm):
    src = ShuffleMamba(**BASE, norm_type=src_norm)
    dst = ShuffleMamba(**BASE, norm_type=dst_norm)
    with pytest.raises(ValueError, match=f"use {src_norm} but this backbone has "
                       f"norm_type='{dst_norm}'"):
        dst.load_state_dict(src.state_dict(), strict=False)


def save_classifier(path, backbone):
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(4, 32)
    torch.save({'state_dict': state, 'meta': {}}, path)


def test_init_cfg_pretrained_loads_checks_and_logs(tmp_path, caplog):
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmengine', log_level='INFO')
    src = ShuffleMamba(**BASE, cls_token='head')
    path = str(tmp_path / 'cls.pth')
    save_classifier(path, src)
    dense = ShuffleMamba(**BASE, cls_token=None, out_type='featmap', out_indices=(2, ),
                         out_scales=(4, 2, 1, 0.5),
                         init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    report = load_pretrained(dense, dense.fit_target(), path, 'backbone.',
                             dense_only=dense.DENSE_ONLY)
    assert report['missing'] == [] and report['unexpected'] == []
    assert report['loaded'] == len(src.state_dict()) - 1  # all but the class token
    assert len(report['new']) > 0 and all(k.startswith('pyramid.') for k in report['new'])
    dense.init_weights()
    torch.testing.assert_close(dense.layers[0].mixer.in_proj.weight,
                               src.layers[0].mixer.in_proj.weight)

    with pytest.raises(ValueError, match='No key of .* starts with prefix'):
        load_pretrained(dense, dense.fit_target(), path, 'encoder.')
    deeper = ShuffleMamba(**dict(BASE, arch=dict(embed_dims=32, num_layers=4)),
                          cls_token=None, out_type='featmap')
    with pytest.raises(ValueError, match='has 3 blocks but this backbone has 4'):
        load_pretrained(deeper, deeper.fit_target(), path, 'backbone.')
    with pytest.raises(ValueError, match='not understood'):
        ShuffleMamba(**BASE, init_cfg=dict(type='Pretrained', checkpoint=path,
                                           strict=True)).init_weights()
