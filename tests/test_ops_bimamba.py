"""The fused CPU mixer (``bimamba_inner``): values and gradients of every input against the
sequential definition (Vim's token-major mixer with the textbook scan, both directions by
flipping, as upstream writes it), in float64; the mixer's fused and unfused paths agree."""
import contextlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from helpers import RecordOps

from mmshufflemamba.models import BiMambaMixer
from mmshufflemamba.ops import BACKEND_ENV, selective_scan_reference
from mmshufflemamba.ops import bimamba as bimamba_module
from mmshufflemamba.ops.bimamba import bimamba_inner
from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel

if os.environ.get(BACKEND_ENV, 'auto') not in ('auto', 'compiled'):
    pytest.skip(f'{BACKEND_ENV}={os.environ[BACKEND_ENV]}: the compiled kernels are not in use',
                allow_module_level=True)

ORDER = ('conv_w_f', 'conv_b_f', 'conv_w_b', 'conv_b_b', 'xproj_w_f', 'xproj_w_b',
         'dtproj_w_f', 'dtproj_w_b', 'dt_bias_f', 'dt_bias_b', 'A_f', 'A_b', 'D_f', 'D_b')


def definition(xz, p):
    """The mixer between in_proj and out_proj as upstream writes it: x and z, then per
    direction (the backward one on the flipped sequence) conv + SiLU, x_proj, dt_proj,
    the scan with D and the z gate; the backward output flipped back; the mean."""
    length, channels = xz.shape[1], xz.shape[2] // 2
    x, z = xz[..., :channels], xz[..., channels:]

    def direction(x, z, s):
        w = p[f'conv_w_{s}']
        x = F.silu(F.conv1d(x.transpose(1, 2), w, p[f'conv_b_{s}'], padding=w.shape[-1] - 1,
                            groups=channels)[..., :length])  # (B, D, L)
        rank, state = p[f'dtproj_w_{s}'].shape[1], p[f'A_{s}'].shape[1]
        dt, B, C = (x.transpose(1, 2) @ p[f'xproj_w_{s}'].t()).split([rank, state, state], -1)
        delta = (dt @ p[f'dtproj_w_{s}'].t()).transpose(1, 2)
        return selective_scan_reference(
            x, delta, p[f'A_{s}'], B.transpose(1, 2), C.transpose(1, 2), p[f'D_{s}'],
            z.transpose(1, 2), delta_bias=p[f'dt_bias_{s}'], delta_softplus=True)

    y = direction(x, z, 'f') + direction(x.flip(1), z.flip(1), 'b').flip(-1)
    return (y / 2).transpose(1, 2)


def make(batch, length, channels, state, rank, dtype=torch.float64, seed=1, taps=4):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    def negative(*shape):
        return (-torch.rand(*shape, generator=g, dtype=dtype) * 2 - 0.1).requires_grad_()

    p = dict(conv_w_f=r(channels, 1, taps, scale=0.5), conv_b_f=r(channels, scale=0.1),
             conv_w_b=r(channels, 1, taps, scale=0.5), conv_b_b=r(channels, scale=0.1),
             xproj_w_f=r(rank + 2 * state, channels, scale=channels**-0.5),
             xproj_w_b=r(rank + 2 * state, channels, scale=channels**-0.5),
             dtproj_w_f=r(channels, rank, scale=rank**-0.5),
             dtproj_w_b=r(channels, rank, scale=rank**-0.5),
             dt_bias_f=r(channels, scale=0.5), dt_bias_b=r(channels, scale=0.5),
             A_f=negative(channels, state), A_b=negative(channels, state),
             D_f=r(channels), D_b=r(channels))
    return r(batch, length, 2 * channels), p


def assert_equals_the_definition(xz, p):
    """The fused mixer's output and every gradient against :func:`definition` (float64)."""
    y = bimamba_inner(xz, *(p[k] for k in ORDER))
    expected = definition(xz, p)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    inputs = [xz] + [p[k] for k in ORDER]
    grad_y = torch.randn_like(y)
    ours = torch.autograd.grad(y, inputs, grad_y)
    theirs = torch.autograd.grad(expected, inputs, grad_y)
    for name, a, b in zip(('xz', ) + ORDER, ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_kernel_is_built():
    assert load_cpu_kernel() is not None, 'run `python -m mmshufflemamba.ops.build --verbose`'


# (batch, L, channels, d_state, dt_rank): L = 1, odd L, the 32-step chunk and across it,
# channel counts that leave a partial group of lanes (8 float64 lanes), every compiled
# d_state, batch 1 and 2; 2 x 150 rows, so that at 1 to 4 threads a task of the backward
# convolution runs several blocks of 32 rows and a block ends at the batch boundary
SHAPES = [(2, 9, 16, 4, 2), (1, 1, 16, 16, 2), (2, 33, 20, 16, 3), (1, 65, 7, 8, 1),
          (2, 32, 16, 1, 2), (1, 31, 3, 4, 1), (2, 150, 12, 4, 2)]


@pytest.mark.parametrize('shape', SHAPES)
def test_fused_mixer_equals_the_definition(shape):
    xz, p = make(*shape)
    assert_equals_the_definition(xz, p)


@pytest.mark.parametrize('taps', [1, 2, 3, 7])
def test_fused_mixer_equals_the_definition_for_other_kernel_sizes(taps):
    """The convolutions take any d_conv (Vim uses 4): K - 1 rows of halo around each block
    of rows in the backward, none at K = 1 (whose (D, 1) weight gradients came back as
    views of one buffer, which the custom op refused as aliased outputs)."""
    assert_equals_the_definition(*make(2, 70, 12, 4, 2, taps=taps))


def test_fused_mixer_gradcheck():
    xz, p = make(1, 5, 3, 4, 1)
    assert torch.autograd.gradcheck(bimamba_inner, (xz, ) + tuple(p[k] for k in ORDER))


# Vim-S (d_inner 768, d_state 16, dt_rank 24, 197 tokens); a partial lane group (20
# channels: 16 + 4 lanes); batch 4 with 40 channels, where a task holds several lane groups
# (the last one partial) whatever the thread count.
@pytest.mark.parametrize('shape', [(2, 197, 768, 16, 24), (2, 33, 20, 16, 3),
                                   (4, 67, 40, 16, 2)])
def test_float32_against_float64(shape):
    """float32 against float64, values and every gradient (float32 with 16 states runs the
    AVX-512 code where it is compiled in, its backward by blocks of states)."""
    xz, p = make(*shape, dtype=torch.float32, seed=3)
    inputs = [xz] + [p[k] for k in ORDER]
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    y = bimamba_inner(*inputs)
    exact = bimamba_inner(*exact_inputs)
    err = ((y.double() - exact).abs().max() / exact.abs().max()).item()
    assert err < 1e-5, err
    grad_y = torch.randn_like(exact)
    ours = torch.autograd.grad(y, inputs, grad_y.float())
    theirs = torch.autograd.grad(exact, exact_inputs, grad_y)
    for name, a, b in zip(('xz', ) + ORDER, ours, theirs):
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize('shape', [(2, 33, 20, 16, 3), (1, 40, 768, 16, 24)])
def test_bfloat16_xz_is_read_as_it_is(shape):
    """A bf16 ``xz`` (in_proj's output under autocast) goes to the kernels without a float32
    copy: the output and every gradient equal, bit for bit, those of the float32 run on the
    same values widened (the conversion is exact), ``xz``'s gradient rounded to bf16; the
    tensor kept for the backward pass is the bf16 ``xz`` itself. The shapes: a partial lane
    group (20 channels) and Vim-S's 768 (the 16-lane loads)."""
    xz, p = make(*shape, dtype=torch.float32, seed=4)
    runs = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = xz.detach().bfloat16().to(dtype).requires_grad_()
        weights = [p[k].detach().clone().requires_grad_() for k in ORDER]
        saved = []

        def keep(t):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            y = bimamba_inner(x, *weights)
        assert y.dtype == dtype
        # a gradient that bf16 holds exactly: the bf16 run's dy passes through a bf16 cast
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).bfloat16()
        y.float().backward(grad_y.float())
        runs[dtype] = (y.float(), x.grad, weights, [t for t in saved if t.shape == x.shape])
    y_bf, dxz_bf, w_bf, kept_bf = runs[torch.bfloat16]
    y_32, dxz_32, w_32, kept_32 = runs[torch.float32]
    assert torch.equal(y_bf, y_32.bfloat16().float())
    assert dxz_bf.dtype == torch.bfloat16 and torch.equal(dxz_bf, dxz_32.bfloat16())
    for name, a, b in zip(ORDER, w_bf, w_32):
        assert torch.equal(a.grad, b.grad), name
    assert [t.dtype for t in kept_bf] == [torch.bfloat16]  # not a float32 copy
    assert [t.dtype for t in kept_32] == [torch.float32]


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_op_registration_holds_for_each_xz_dtype(dtype):
    """torch.library's own checks of the custom op (schema, autograd registration, the fake
    implementations against the real outputs' shapes and dtypes, AOT dispatch through the
    backward op) for each dtype ``xz`` reaches it in: the compute type, or bf16 (the
    weights then fp32)."""
    xz, p = make(2, 9, 16, 4, 2, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    args = (xz.detach().to(dtype).requires_grad_(), ) + tuple(p[k] for k in ORDER)
    torch.library.opcheck(torch.ops.mmshufflemamba.bimamba_inner.default, args)
    if dtype != torch.float64:
        torch.library.opcheck(torch.ops.mmshufflemamba.bimamba_inner.default, args,
                              dict(recompute=True))


def test_eager_calls_and_the_registered_op_compute_the_same():
    """A plain call runs the op's functions through an autograd.Function (no dispatcher); a
    call under a dispatch mode goes through the registered op. Same values and gradients,
    bit for bit, and each call takes its path."""
    xz, p = make(2, 37, 32, 16, 3, dtype=torch.float32, seed=6)
    grad_y = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(7))
    runs = []
    for traced in (False, True):
        inputs = [t.detach().clone().requires_grad_() for t in (xz, *(p[k] for k in ORDER))]
        with (RecordOps() if traced else contextlib.nullcontext()) as record:
            y = bimamba_inner(*inputs)
            y.backward(grad_y)
        node = type(y.grad_fn).__name__
        assert ('bimamba_inner' in node) == traced and ('EagerInner' in node) != traced, node
        if traced:
            assert {'bimamba_inner', 'bimamba_inner_backward'} <= set(record.names)
        runs.append([y.detach()] + [t.grad for t in inputs])
    for name, a, b in zip(('y', 'xz') + ORDER, *runs):
        assert torch.equal(a, b), name
    # the mixer passes its parameters (nn.Parameter, a tensor subclass): still the eager path
    out = BiMambaMixer(16, d_state=4)(torch.randn(1, 5, 16))
    nodes, seen = [out.grad_fn], []
    while nodes:
        node = nodes.pop()
        seen.append(type(node).__name__)
        nodes += [n for n, _ in node.next_functions if n is not None]
    assert '_EagerInnerBackward' in seen, seen


@pytest.mark.parametrize('autocast', [False, True])
def test_calls_without_autograd_skip_the_function_and_compute_the_same(monkeypatch,
                                                                         autocast):
    """Under no_grad (and inference_mode) nothing is recorded for a backward pass, so the op's
    forward runs without the autograd.Function: the same bits as with autograd on, with and
    without bf16 autocast (out_proj then in bf16 inside the op)."""
    mixer = BiMambaMixer(16, d_state=4)
    hidden = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(8))
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        with_autograd = mixer(hidden)
        assert type(with_autograd.grad_fn).__name__ == '_EagerInnerBackward'  # the fused path

        def refuse(*args):
            raise AssertionError('the autograd.Function ran where nothing needs a backward pass')

        monkeypatch.setattr(bimamba_module._EagerInner, 'apply', refuse)
        with torch.no_grad():
            without = mixer(hidden)
        with torch.inference_mode():
            inference = mixer(hidden)
    assert with_autograd.dtype == without.dtype == inference.dtype
    assert torch.equal(with_autograd.detach(), without)
    assert torch.equal(with_autograd.detach(), inference)


def test_out_proj_inside_equals_the_definition_and_keeps_no_y():
    """With out_proj's weight and bias: out_proj(definition) and every gradient (float64);
    y is rebuilt in the backward pass, so no (B, L, D) tensor is kept; a second derivative
    raises (the op is differentiable once)."""
    xz, p = make(2, 37, 24, 16, 3, seed=8)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(10, 24, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = (xz, *(p[k] for k in ORDER), w, b)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = bimamba_inner(*inputs)
    assert not [t for t in kept if t.shape == (2, 37, 24)]
    expected = F.linear(definition(xz, p), w, b)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, grad_out, create_graph=True)
    for name, a, e in zip(('xz', ) + ORDER + ('out_w', 'out_b'), got,
                          torch.autograd.grad(expected, inputs, grad_out)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11, msg=name)
    # x_proj's gradient is a product with dt_proj's weight: differentiated again, it would
    # give part of a second derivative (silently wrong) were the op not marked
    with pytest.raises(RuntimeError):
        torch.autograd.grad(got[1 + ORDER.index('xproj_w_f')].sum(), p['dtproj_w_f'])


@pytest.mark.parametrize('bias', [False, True])
def test_mixer_paths_agree(monkeypatch, bias):
    """The fused CPU path and the unfused path (the PyTorch scan) of BiMambaMixer."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(24, d_state=8, bias=bias).double()
    hidden = torch.randn(2, 19, 24, dtype=torch.float64, requires_grad=True)
    outs = []
    for backend in ('auto', 'torch'):
        monkeypatch.setenv(BACKEND_ENV, backend)
        assert mixer.fused(hidden) == (backend == 'auto')
        mixer.zero_grad()
        hidden.grad = None
        out = mixer(hidden)
        out.square().sum().backward()
        outs.append([out.detach(), hidden.grad] + [q.grad for q in mixer.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('traced', [False, True])
@pytest.mark.parametrize('out_proj', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_recompute_keeps_only_the_inputs_and_gives_the_same_gradients_bit_for_bit(
        dtype, out_proj, traced):
    """``recompute=True``: autograd keeps the op's inputs only (not x_dbl or the
    checkpoints); the backward pass makes them again. Eager and through the registered op."""
    xz, p = make(2, 70, 32, 16, 3, dtype=torch.float32, seed=10)
    g = torch.Generator().manual_seed(11)
    extra = [torch.randn(12, 32, generator=g), torch.randn(12, generator=g)] if out_proj else []
    runs = []
    for recompute in (False, True):
        inputs = [xz.detach().to(dtype)] + [t.detach() for t in (*(p[k] for k in ORDER), *extra)]
        inputs = [t.clone().requires_grad_() for t in inputs]
        kept = []
        with (RecordOps() if traced else contextlib.nullcontext()), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t,
                                                         lambda t: t):
            y = bimamba_inner(*inputs, recompute=recompute)
        y.float().square().sum().backward()
        others = [t for t in kept if not any(t is i for i in inputs)]
        assert len(others) == (0 if recompute else 4)  # x_dbl_f, x_dbl_b, ckpt_f, ckpt_b
        runs.append([y] + [t.grad for t in inputs])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def mixer_run(monkeypatch, module, hidden, *args, **autocast):
    """Output(s), the inputs' and every parameter's gradients of a square loss, and whether
    the memory of the mixer's input and of in_proj's output xz (what the fused op got) was
    still in use once the forward pass returned."""
    import mmshufflemamba.models.layers.mixer as mixer_module
    mixer = module if isinstance(module, BiMambaMixer) else module.mixer
    made = []

    def recording(xz, *args, **kwargs):
        made.append(StorageWeakRef(xz.untyped_storage()))
        return bimamba_inner(xz, *args, **kwargs)

    def mixer_forward(hidden, *args, forward=mixer.forward):
        made.append(StorageWeakRef(hidden.untyped_storage()))
        return forward(hidden, *args)

    monkeypatch.setattr(mixer_module, 'bimamba_inner', recording)
    monkeypatch.setattr(mixer, 'forward', mixer_forward)
    module.zero_grad()
    inputs = [t.detach().requires_grad_() for t in (hidden, *args)]
    with torch.autocast('cpu', **autocast) if autocast else contextlib.nullcontext():
        outs = module(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs, )
    alive = [not ref.expired() for ref in made]
    sum(out.float().square().sum() for out in outs).backward()
    monkeypatch.undo()
    return [*outs, *(t.grad for t in inputs)] + [q.grad for q in module.parameters()], alive


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('autocast', [{}, dict(dtype=torch.bfloat16)])
def test_recompute_frees_xz_and_gives_the_same_gradients_bit_for_bit(monkeypatch, autocast,
                                                                     bias):
    torch.manual_seed(0)
    mixer = BiMambaMixer(32, bias=bias)
    hidden = torch.randn(2, 45, 32)
    kept, (_, kept_alive) = mixer_run(monkeypatch, mixer, hidden, **autocast)
    mixer.recompute = True
    remade, (_, remade_alive) = mixer_run(monkeypatch, mixer, hidden, **autocast)
    assert kept_alive and not remade_alive
    for a, b in zip(kept, remade):
        assert torch.equal(a, b)


@pytest.mark.parametrize('autocast', [{}, dict(dtype=torch.bfloat16)])
def test_recompute_in_a_block_frees_the_norms_output_too(monkeypatch, autocast):
    """In a block the norm's output (in_proj's input) is made again from the residual
    stream, which the norm keeps; outputs and gradients bit for bit the same."""
    from mmshufflemamba.models.layers.block import MambaBlock
    torch.manual_seed(0)
    block = MambaBlock(32, drop_path_rate=0.0).train()
    g = torch.Generator().manual_seed(1)
    hidden, residual = torch.randn(2, 45, 32, generator=g), torch.randn(2, 45, 32, generator=g)
    kept, kept_alive = mixer_run(monkeypatch, block, hidden, residual, **autocast)
    block.mixer.recompute = True
    remade, remade_alive = mixer_run(monkeypatch, block, hidden, residual, **autocast)
    # (under autocast in_proj keeps a bfloat16 copy of its input, not the input itself)
    assert kept_alive == [not autocast, True] and remade_alive == [False, False]
    for a, b in zip(kept, remade):
        assert torch.equal(a, b)


@pytest.mark.parametrize('norm_type', ['RMSNorm', 'LN'])
def test_recompute_on_the_unfused_path_remakes_the_norms_output(monkeypatch, norm_type):
    """Off the fused path (the PyTorch scan) the block's recipe still replaces in_proj's
    input; the same outputs and gradients, bit for bit, for either norm."""
    from mmshufflemamba.models.layers.block import MambaBlock
    from mmshufflemamba.models.layers.mixer import use_scan_backend
    torch.manual_seed(0)
    block = MambaBlock(16, norm_type=norm_type, mixer_cfg=dict(d_state=4)).train()
    hidden = torch.randn(2, 13, 16)
    with use_scan_backend(block, 'torch'):
        kept, kept_alive = mixer_run(monkeypatch, block, hidden)
        block.mixer.recompute = True
        remade, remade_alive = mixer_run(monkeypatch, block, hidden)
    assert kept_alive == [True] and remade_alive == [False]  # the mixer's input
    for a, b in zip(kept, remade):
        assert torch.equal(a, b)


@pytest.mark.parametrize('backend', ['compiled', 'torch'])
def test_recompute_frees_the_graph_without_a_backward_pass(backend):
    """What the hooks keep holds no reference cycle: a forward pass that is never
    differentiated, or differentiated with retain_graph, frees its tensors when dropped."""
    import gc
    from mmshufflemamba.models.layers.block import MambaBlock
    from mmshufflemamba.models.layers.mixer import use_scan_backend
    block = MambaBlock(16, mixer_cfg=dict(d_state=4, recompute=True)).train()
    leaf = torch.randn(1, 9, 16, requires_grad=True)
    for differentiate in (False, True):
        x = leaf * 1
        storage = StorageWeakRef(x.untyped_storage())
        with use_scan_backend(block, backend):
            out, residual = block(x)
        if differentiate:
            (out.sum() + residual.sum()).backward(retain_graph=True)
        del x, out, residual
        gc.collect()
        assert storage.expired()


def test_recompute_keeps_autograds_checks_and_works_where_hooks_are_disabled():
    """A weight changed in place after the forward pass raises, as without recompute (the
    hooks keep every other saved tensor with its version); under
    disable_saved_tensors_hooks the block runs as without recompute; so it does on an
    inference tensor."""
    from mmshufflemamba.models.layers.block import MambaBlock
    block = MambaBlock(16, mixer_cfg=dict(recompute=True)).train()
    hidden = torch.randn(1, 9, 16, requires_grad=True)
    out, _ = block(hidden)
    with torch.no_grad():
        block.mixer.x_proj.weight.add_(1)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        out.sum().backward()
    with torch.autograd.graph.disable_saved_tensors_hooks('no hooks here'):
        out, _ = block(hidden)
        out.sum().backward()
    with torch.inference_mode():  # a tensor without a version counter
        made_for_inference = torch.randn(1, 9, 16)
    out, _ = block(made_for_inference)
    out.sum().backward()


def test_recompute_on_an_inference_tensor_gives_the_same_gradients_bit_for_bit():
    """An inference tensor goes through RMSNorm's torch formula where autograd is on, so the
    block keeps the norm's output instead of remaking it (without autograd, by the kernel)."""
    from mmshufflemamba.models.layers.block import MambaBlock
    with torch.inference_mode():
        made_for_inference = torch.randn(2, 33, 96, generator=torch.Generator().manual_seed(3))
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        block = MambaBlock(96, mixer_cfg=dict(recompute=recompute)).train()
        out, _ = block(made_for_inference)
        out.sum().backward()
        grads.append({name: p.grad for name, p in block.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


def test_recompute_keeps_xz_where_in_proj_may_not_be_plain_linear(monkeypatch):
    """A hook on in_proj could change its output, which the recompute would not see."""
    mixer = BiMambaMixer(16, recompute=True)
    mixer.in_proj.register_forward_hook(lambda module, args, out: out * 2)
    hidden = torch.randn(1, 9, 16)
    assert mixer_run(monkeypatch, mixer, hidden)[1] == [True, True]


def test_recompute_refuses_an_input_changed_in_place():
    from mmshufflemamba.models.layers.block import MambaBlock
    hidden = torch.randn(1, 9, 16, requires_grad=True)
    for module in (BiMambaMixer(16, recompute=True),
                   MambaBlock(16, mixer_cfg=dict(recompute=True))):
        x = hidden * 1  # a non-leaf, changed in place below
        out = module(x)
        x.mul_(2)
        with pytest.raises(RuntimeError, match='modified in place after the forward pass'):
            (out if isinstance(out, Tensor) else out[0]).sum().backward()


def test_recompute_leaves_other_saved_tensor_hooks_in_charge(monkeypatch):
    """Under activation checkpointing (or a user's offloading hooks) those hooks decide
    what is kept: replacing them would keep what they discard. A block with with_cp and
    recompute computes what a plain block computes."""
    import mmshufflemamba.models.layers.mixer as mixer_module
    from mmshufflemamba.models.layers.block import MambaBlock
    added = []
    monkeypatch.setattr(mixer_module._Recipes, 'add', lambda self, *a: added.append(a))
    torch.manual_seed(0)
    block = MambaBlock(16, mixer_cfg=dict(recompute=True), with_cp=True).train()
    reference = MambaBlock(16).train()
    reference.load_state_dict(block.state_dict())
    results = []
    for model in (block, reference):
        hidden = torch.randn(1, 11, 16, generator=torch.Generator().manual_seed(1),
                             requires_grad=True)
        out, residual = model(hidden)
        (out.sum() + residual.sum()).backward()
        results.append([out, hidden.grad] + [q.grad for q in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert not added  # the checkpoint's hooks, not ours, handled the block's saves
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert not mixer_module._Recipes.possible()
    assert mixer_module._Recipes.possible()


def test_unsupported_state_size_is_refused_clearly():
    xz, p = make(1, 4, 8, 3, 1)
    with pytest.raises(RuntimeError, match='compiled for d_state 1, 4, 8 and 16'):
        bimamba_inner(xz, *(p[k] for k in ORDER))
    assert not BiMambaMixer(16, d_state=3).fused(torch.zeros(1, 2, 16))


def test_dt_rank_past_the_kernels_limit_takes_the_unfused_path():
    limit = load_cpu_kernel().max_dt_rank
    xz, p = make(1, 4, 8, 4, limit + 1)
    with pytest.raises(RuntimeError, match=f'takes dt_rank 1 to {limit}; got {limit + 1}'):
        bimamba_inner(xz, *(p[k] for k in ORDER))
    assert BiMambaMixer(16, d_state=4, dt_rank=limit).fused(torch.zeros(1, 2, 16))
    mixer = BiMambaMixer(16, d_state=4, dt_rank=limit + 1)
    assert not mixer.fused(torch.zeros(1, 2, 16))
    assert mixer(torch.randn(1, 3, 16)).shape == (1, 3, 16)  # the unfused path runs it


def test_fused_mixer_equals_the_definition_in_one_task():
    """One thread: one task holds all five lane groups (float64: 8 lanes each), so the step
    sizes are projected two lane groups at a time and then one; dt_rank 40, past Vim-S's
    24; 37 steps: a chunk and then 5, blocks of fewer than 8 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert_equals_the_definition(*make(1, 37, 40, 4, 40))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize('threads, batch', [(3, 1), (3, 2), (4, 2), (4, 1)])
def test_fused_mixer_equals_the_definition_in_several_tasks(threads, batch):
    """At 3 or 4 threads a batch entry's five lane groups are split over several tasks (3 per
    entry at 3 threads, 2 at 4 threads and batch 2), the last one short; at 4 threads and
    batch 1, 4 tasks of 2, 2, 1 and no lane groups. The gradients of B and C are summed over
    the tasks."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_equals_the_definition(*make(batch, 37, 40, 4, 3))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('fast_path', [True, False])
def test_mixer_runs_an_empty_batch(bias, fast_path):
    """Batch 0, fused and unfused (the compiled scan per direction): an empty output and
    zero weight gradients (on the fused path, views with an inferred size failed on 0
    elements; the kernels take no tasks)."""
    mixer = BiMambaMixer(32, d_state=4, bias=bias)
    mixer.use_fast_path = fast_path
    mixer.scan_backend = 'compiled'
    x = torch.randn(0, 5, 32, requires_grad=True)
    assert mixer.fused(x) == fast_path
    y = mixer(x)
    assert y.shape == (0, 5, 32)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name


@pytest.mark.slow
def test_scan_ceiling_benchmark_runs():
    """benchmarks/bench_scan_ceiling.py compiles its loop against the kernel's header and
    prints both rates (tiny sizes: it measures nothing meaningful here)."""
    from helpers import run_tool
    out = run_tool('benchmarks/bench_scan_ceiling.py', '--length', '65', '--repeats', '1',
                   timeout=600).stdout
    rates = [float(line.split(': ')[1].split()[0]) for line in out.splitlines()
             if 'G updates/s' in line]
    assert len(rates) == 2 and all(rate > 0 for rate in rates), out
