"""ShuffleMamba backbone: architectures, checkpoint layout, outputs, errors."""
import pytest
import torch

from helpers import token_positions

from mmshufflemamba.models import BiMambaMixer, ShuffleMamba

TINY = dict(arch=dict(embed_dims=32, num_layers=4), img_size=32, patch_size=8,
            mixer_cfg=dict(d_state=4))

# DESIGN.md section 1: published counts with a 1000-class linear head (millions); the
# 40-layer large model is ShuffleMamba's mambar_large_patch16_224_40 (~283M).
PUBLISHED_PARAMS = {'small': 26, 'middle': 74, 'base': 98, 'large': 341, 'large-40': 283}


def count_with_linear_head(model: ShuffleMamba, num_classes: int = 1000) -> int:
    params = sum(p.numel() for p in model.parameters())
    return params + model.embed_dims * num_classes + num_classes


@pytest.mark.parametrize('arch', sorted(PUBLISHED_PARAMS))
def test_param_count_matches_published(arch):
    with torch.device('meta'):  # shapes only: no memory, no init
        count = count_with_linear_head(ShuffleMamba(arch=arch))
    published = PUBLISHED_PARAMS[arch] * 1e6
    assert abs(count - published) / published < 0.01, count


def test_arch_zoo_carries_upstreams_norm_and_stride():
    with torch.device('meta'):  # shapes only: no memory, no init
        middle, large_40 = ShuffleMamba(arch='middle'), ShuffleMamba(arch='large-40')
    assert middle.norm_type == 'LN'  # rms_norm=False upstream
    assert isinstance(middle.layers[0].norm, torch.nn.LayerNorm)
    for arch in ('tiny', 'small', 'base', 'large', 'large-40'):
        assert ShuffleMamba.arch_zoo[arch].get('norm_type', 'RMSNorm') == 'RMSNorm'
    assert large_40.num_layers == 40
    plus = ShuffleMamba(arch='tiny-stride8')
    assert plus.patch_stride == 8 and plus.patch_embed.proj.stride == (8, 8)
    with pytest.raises(ValueError, match="norm_type='RMSNorm' contradicts arch 'middle'"):
        ShuffleMamba(arch='middle', norm_type='RMSNorm')
    with pytest.raises(ValueError, match="patch_stride=16 contradicts arch 'tiny-stride8'"):
        ShuffleMamba(arch='tiny-stride8', patch_stride=16)
    custom = ShuffleMamba(arch=dict(embed_dims=32, num_layers=2, norm_type='LN',
                                    patch_stride=8), img_size=32)
    assert custom.norm_type == 'LN' and custom.patch_resolution == (3, 3)
    with pytest.raises(ValueError, match=r"Unknown arch keys \['depth'\]"):
        ShuffleMamba(arch=dict(embed_dims=32, num_layers=2, depth=2))


def test_patch_stride_grid_and_pyramid_strides():
    model = ShuffleMamba(**dict(TINY, img_size=40), patch_stride=4, cls_token=None,
                         out_type='featmap', out_indices=(0, 1, 2, 3),
                         out_scales=(2, 1, 0.5, 0.25))
    assert model.patch_resolution == (9, 9)  # (40 - 8) // 4 + 1
    assert model.out_strides == (2, 4, 8, 16)
    maps = model.eval()(torch.randn(1, 3, 40, 48))
    assert [tuple(m.shape[2:]) for m in maps] == [(18, 22), (9, 11), (5, 6), (3, 3)]
    with pytest.raises(ValueError, match=r'sides must be 8 \+ 4 \* k \(e.g. 40 or 44\)'):
        model(torch.randn(1, 3, 42, 48))
    assert ShuffleMamba(**TINY, out_type='featmap').out_strides == (8, )


def test_tiny_param_count_matches_rounded_published_figure():
    # Vim-T is published as "7M"; the reference layout gives 7.148M (rounds to 7M).
    count = count_with_linear_head(ShuffleMamba(arch='tiny'))
    assert round(count / 1e6) == 7 and abs(count - 7.148e6) < 1e4, count


def reference_tiny_keys():
    """Vim-T (``vim_tiny_patch16_224``, head cls token, RMSNorm) keys: DESIGN.md 3."""
    mixer = ['in_proj.weight', 'conv1d.weight', 'conv1d.bias', 'conv1d_b.weight',
             'conv1d_b.bias', 'x_proj.weight', 'x_proj_b.weight', 'dt_proj.weight',
             'dt_proj.bias', 'dt_proj_b.weight', 'dt_proj_b.bias', 'A_log', 'A_b_log', 'D',
             'D_b', 'out_proj.weight']
    keys = {'patch_embed.proj.weight', 'patch_embed.proj.bias', 'pos_embed', 'cls_token',
            'norm_f.weight'}
    for i in range(24):
        keys.add(f'layers.{i}.norm.weight')
        keys.update(f'layers.{i}.mixer.{name}' for name in mixer)
    return keys


def test_tiny_state_dict_follows_reference_layout():
    state = ShuffleMamba(arch='tiny').state_dict()
    assert set(state) == reference_tiny_keys()
    assert state['pos_embed'].shape == (1, 197, 192)
    assert state['layers.0.mixer.in_proj.weight'].shape == (768, 192)
    assert state['layers.0.mixer.x_proj.weight'].shape == (12 + 32, 384)
    assert state['layers.0.mixer.dt_proj.weight'].shape == (384, 12)
    assert state['layers.0.mixer.A_log'].shape == (384, 16)
    assert state['layers.0.mixer.conv1d.weight'].shape == (384, 1, 4)
    assert state['layers.0.mixer.out_proj.weight'].shape == (192, 384)


@pytest.mark.parametrize('cls_token', ['head', 'middle', None])
@pytest.mark.parametrize('num_registers', [0, 3])
@pytest.mark.parametrize('size', [(32, 32), (48, 80)])
def test_output_shapes(cls_token, num_registers, size):
    x = torch.randn(2, 3, *size)
    h, w = size[0] // 8, size[1] // 8
    tokens = h * w + (cls_token is not None) + num_registers
    expected = {'raw': (2, tokens, 32), 'featmap': (2, 32, h, w), 'avg_featmap': (2, 32),
                'cls_token': (2, 32)}
    if cls_token is not None and num_registers:
        with pytest.raises(ValueError, match='needs cls_token=None'):
            ShuffleMamba(**TINY, cls_token=cls_token, num_registers=num_registers)
        return
    for out_type, shape in expected.items():
        if out_type == 'cls_token' and cls_token is None:
            continue
        model = ShuffleMamba(**TINY, cls_token=cls_token, num_registers=num_registers,
                             out_type=out_type, out_indices=[1, -1]).eval()
        outs = model(x)
        assert len(outs) == 2 and all(o.shape == shape for o in outs), (out_type, outs)


def test_token_layout_positions():
    model = ShuffleMamba(**TINY, cls_token='middle', out_type='raw').eval()
    layout = model._layout(16)
    assert layout.cls_index == 8 and token_positions(layout)[0].tolist() == list(
        range(8)) + list(range(9, 17))
    # Mamba-Reg: blocks of 16 // 5 = 3 patches, each followed by a register, then the rest
    regs = ShuffleMamba(**TINY, cls_token=None, num_registers=4, out_type='raw')._layout(16)
    _, register_index, order = token_positions(regs)
    assert register_index.tolist() == [3, 7, 11, 15]
    assert order.tolist() == [0, 1, 2, 16, 3, 4, 5, 17, 6, 7, 8, 18, 9, 10, 11, 19,
                              12, 13, 14, 15]
    # featmap returns the patch tokens in raster order, whatever the layout
    x = torch.randn(1, 3, 32, 32)
    for kwargs in (dict(cls_token='middle'), dict(cls_token=None, num_registers=3)):
        raw_model = ShuffleMamba(**TINY, out_type='raw', **kwargs).eval()
        fmap_model = ShuffleMamba(**TINY, out_type='featmap', **kwargs).eval()
        fmap_model.load_state_dict(raw_model.state_dict())
        raw = raw_model(x)[0]
        fmap = fmap_model(x)[0]
        patches = raw[:, token_positions(raw_model._layout(16))[0]]
        torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), patches)


def test_bad_inputs_raise_clear_errors():
    model = ShuffleMamba(**TINY)
    with pytest.raises(ValueError, match='not a multiple of the patch size 8'):
        model(torch.randn(1, 3, 32, 36))
    with pytest.raises(ValueError, match='Expected 3 input channels, got 1'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='outside the depth'):
        ShuffleMamba(**TINY, out_indices=[4])
    with pytest.raises(ValueError, match='outside the depth'):
        ShuffleMamba(**TINY, out_indices=-5)
    with pytest.raises(ValueError, match='needs a class token'):
        ShuffleMamba(**TINY, cls_token=None, out_type='cls_token')
    with pytest.raises(ValueError, match='out_type'):
        ShuffleMamba(**TINY, out_type='tokens')
    with pytest.raises(ValueError, match='Unknown arch'):
        ShuffleMamba(arch='huge')
    with pytest.raises(ValueError, match=r"\['num_layers'\]"):
        ShuffleMamba(arch=dict(embed_dims=8))
    with pytest.raises(ValueError, match='img_size'):
        ShuffleMamba(**dict(TINY, img_size=30))


def test_pos_embed_resized_at_run_time_and_on_load():
    torch.manual_seed(0)
    src = ShuffleMamba(**TINY, cls_token='middle').eval()
    dst = ShuffleMamba(**dict(TINY, img_size=48), cls_token='middle').eval()
    dst.load_state_dict(src.state_dict())  # 4x4 grid -> 6x6 grid through the pre-hook
    assert dst.pos_embed.shape == (1, 37, 32)
    # the class-token slot travels to the middle of the new grid unchanged
    torch.testing.assert_close(dst.pos_embed[:, 18], src.pos_embed[:, 8])
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(dst(x)[0], src(x)[0])  # same bicubic resize either way
    with pytest.raises(ValueError, match='neither a square patch grid'):
        ShuffleMamba(**dict(TINY, img_size=48), cls_token='middle').load_state_dict(
            {'pos_embed': torch.zeros(1, 20, 32)}, strict=False)


def test_bidirectional_mixer_is_symmetric_under_reversal():
    """Swapping the forward and backward parameter sets and reversing the sequence gives
    the reversed output: the two branches really scan in opposite directions."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4).double()
    swapped = BiMambaMixer(16, d_state=4).double()
    state = mixer.state_dict()
    renamed = {}
    for key, value in state.items():
        for a, b in (('conv1d.', 'conv1d_b.'), ('x_proj.', 'x_proj_b.'),
                     ('dt_proj.', 'dt_proj_b.')):
            if key.startswith(a):
                key = b + key[len(a):]
            elif key.startswith(b):
                key = a + key[len(b):]
        key = {'A_log': 'A_b_log', 'A_b_log': 'A_log', 'D': 'D_b', 'D_b': 'D'}.get(key, key)
        renamed[key] = value
    swapped.load_state_dict(renamed)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(swapped(x.flip(1)), mixer(x).flip(1))


@pytest.mark.parametrize('bias', [False, True])
def test_mixer_matches_plain_definition(bias):
    """The mixer against Vim's formulation written token-major with the modules themselves
    and the textbook scan: in_proj -> (conv1d -> x_proj -> dt_proj -> scan) per direction."""
    from mmshufflemamba.ops import selective_scan_reference
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4, bias=bias).double()
    hidden = torch.randn(2, 9, 16, dtype=torch.float64)

    def branch(x, z, suffix):  # x, z: (B, L, d_inner)
        conv = getattr(mixer, f'conv1d{suffix}')
        x = torch.nn.functional.silu(conv(x.transpose(1, 2))[..., :x.shape[1]])
        dt, B, C = getattr(mixer, f'x_proj{suffix}')(x.transpose(1, 2)).split([1, 4, 4], -1)
        delta = torch.nn.functional.softplus(getattr(mixer, f'dt_proj{suffix}')(dt))
        A = -torch.exp(getattr(mixer, 'A_log' if not suffix else 'A_b_log'))
        return selective_scan_reference(x, delta.transpose(1, 2), A, B.transpose(1, 2),
                                        C.transpose(1, 2), getattr(mixer, f'D{suffix}'),
                                        z.transpose(1, 2)).transpose(1, 2)

    x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
    y = (branch(x, z, '') + branch(x.flip(1), z.flip(1), '_b').flip(1)) / 2
    torch.testing.assert_close(mixer(hidden), mixer.out_proj(y), rtol=1e-10, atol=1e-10)


def test_optimizer_hints():
    model = ShuffleMamba(**TINY, cls_token=None, out_type='avg_featmap', num_registers=2)
    depth = {n: model.get_layer_depth(n, 'backbone.')[0] for n, _ in model.named_parameters(
        prefix='backbone')}
    assert depth['backbone.pos_embed'] == 0 and depth['backbone.patch_embed.proj.weight'] == 0
    assert depth['backbone.layers.0.mixer.A_log'] == 1
    assert depth['backbone.layers.3.norm.weight'] == 4
    assert depth['backbone.norm_f.weight'] == 5
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (5, 6)
    assert {'pos_embed', 'cls_token', 'register_tokens', 'pos_embed_reg'} <= \
        model.no_weight_decay()
    flagged = {n for n, p in model.named_parameters() if getattr(p, '_no_weight_decay', False)}
    assert {'layers.0.mixer.A_log', 'layers.0.mixer.A_b_log', 'layers.0.mixer.D',
            'layers.0.mixer.D_b'} <= flagged
    assert len(flagged) == 4 * 4


def test_frozen_stages():
    model = ShuffleMamba(**TINY, frozen_stages=2).train()
    assert not model.pos_embed.requires_grad and not model.cls_token.requires_grad
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.layers[1].parameters())
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert not model.layers[0].training and model.layers[2].training
    with pytest.raises(ValueError, match='frozen_stages'):
        ShuffleMamba(**TINY, frozen_stages=5)


def test_training_step_updates_every_parameter_and_drop_path_schedule():
    torch.manual_seed(0)
    model = ShuffleMamba(**TINY, drop_path_rate=0.3, shuffle_rate=0.5).train()
    rates = [getattr(layer.drop_path, 'drop_prob', 0.0) for layer in model.layers]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2])
    assert model.drop_path.drop_prob == pytest.approx(0.3)
    out = model(torch.randn(2, 3, 32, 32))[0]
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_register_large_matches_published_count():
    """Reg-L (DESIGN.md: ~341M): 16 registers, each reduced 8x, concatenated, normed."""
    from mmshufflemamba.models import RegisterClsHead
    with torch.device('meta'):  # shapes only: no memory, no init
        backbone = ShuffleMamba(arch='large', cls_token=None, num_registers=16,
                                out_type='registers')
        head = RegisterClsHead(1000, 1024, 16, reduction=8)
    count = sum(p.numel() for m in (backbone, head) for p in m.parameters())
    assert abs(count - 341e6) / 341e6 < 0.01, count


def test_activation_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    plain = ShuffleMamba(**TINY).train()
    checkpointed = ShuffleMamba(**TINY, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs = [model(x)[0] for model in (plain, checkpointed)]
    torch.testing.assert_close(outs[0], outs[1])
    for out in outs:
        out.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_recompute_gives_the_same_values_and_gradients_bit_for_bit(monkeypatch):
    """``mixer_cfg=dict(recompute=True)`` with the layer-wise shuffle and drop path in
    training (the same seed: the recomputation draws no random numbers); every block lets
    go of in_proj's input and output."""
    import mmshufflemamba.models.layers.mixer as mixer_module
    remade = []
    pack = mixer_module._Recipes._pack

    def counting(self, t):
        packed = pack(self, t)
        remade.append(isinstance(packed, mixer_module._Remade))
        return packed

    monkeypatch.setattr(mixer_module._Recipes, '_pack', counting)
    cfg = dict(TINY, shuffle_rate=0.5, drop_path_rate=0.2)
    torch.manual_seed(0)
    plain = ShuffleMamba(**cfg).train()
    lean = ShuffleMamba(**dict(cfg, mixer_cfg=dict(d_state=4, recompute=True))).train()
    lean.load_state_dict(plain.state_dict())
    assert all(m.recompute for m in lean.modules() if isinstance(m, BiMambaMixer))
    x = torch.randn(2, 3, 32, 32)
    results = []
    for model in (plain, lean):
        torch.manual_seed(1)
        out = model(x)[0]
        out.square().sum().backward()
        results.append([out] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert sum(remade) == 2 * TINY['arch']['num_layers']
