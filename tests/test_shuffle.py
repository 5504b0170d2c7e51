"""Stochastic layer-wise shuffle: exactly as DESIGN.md section 1 states it."""
import math

import pytest
import torch
from torch import nn

from mmshufflemamba.models import LayerwiseShuffle, ShuffleMamba, shuffle_probabilities

SMALL = dict(arch=dict(embed_dims=32, num_layers=5), img_size=32, patch_size=8,
             mixer_cfg=dict(d_state=4))


def plain_forward(model: ShuffleMamba, x: torch.Tensor) -> torch.Tensor:
    """The backbone's forward written without the shuffle module (the plain Vim)."""
    hidden, layout, _ = model.embed(x)
    residual = None
    for layer in model.layers:
        hidden, residual = layer(hidden, residual)
    stream = residual + model.drop_path(hidden)
    return model.norm_f(stream)[:, layout.cls_index]


def test_probabilities_follow_depth():
    assert shuffle_probabilities(5, 0.5) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert shuffle_probabilities(1, 0.9) == [0.0]
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match='shuffle_rate'):
            shuffle_probabilities(4, rate)
    with pytest.raises(ValueError, match='shuffle_rate'):
        ShuffleMamba(**SMALL, shuffle_rate=2.0)


@pytest.mark.parametrize('rate,training', [(0.0, True), (0.7, False)])
def test_no_shuffle_is_bit_identical_to_plain_vim(rate, training):
    torch.manual_seed(0)
    model = ShuffleMamba(**SMALL, shuffle_rate=rate).train(training)
    x = torch.randn(2, 3, 32, 32)
    rng_before = torch.get_rng_state()
    out = model(x)[0]
    assert torch.equal(torch.get_rng_state(), rng_before), 'the shuffle drew random numbers'
    assert torch.equal(out, plain_forward(model, x))


def test_plan_draws_each_layer_with_its_probability_and_uniform_permutations():
    """The draws the model makes (``plan``), checked statistically: per-layer frequency
    against ``p_i``, layers independent, each permutation uniform over ``L!``."""
    depth, rate, tokens, trials = 6, 0.8, 3, 6000
    probs = shuffle_probabilities(depth, rate)
    shuffle = LayerwiseShuffle(depth, rate, generator=torch.Generator().manual_seed(0)).train()
    plans = [shuffle.plan(tokens) for _ in range(trials)]
    hits = torch.tensor([[perm is not None for perm in plan] for plan in plans],
                        dtype=torch.float64)
    for layer, p in enumerate(probs):
        tolerance = 4.5 * math.sqrt(p * (1 - p) / trials) + 1e-9
        assert abs(hits[:, layer].mean().item() - p) <= tolerance, (layer, p)
    # independent layers: the last two are shuffled together with probability p4 * p5
    both = probs[4] * probs[5]
    assert abs((hits[:, 4] * hits[:, 5]).mean().item() - both) <= 4.5 * math.sqrt(
        both * (1 - both) / trials)
    # every shuffled layer's permutation is one of the 3! = 6 orders, each equally likely
    # (chi-square, 5 degrees of freedom: 25 is beyond its 99.99th percentile)
    perms = [tuple(perm.tolist()) for plan in plans for perm in plan if perm is not None]
    assert all(sorted(p) == list(range(tokens)) for p in perms)
    counts = torch.tensor([perms.count(p) for p in set(perms)], dtype=torch.float64)
    assert len(counts) == math.factorial(tokens)
    expected = len(perms) / len(counts)
    assert ((counts - expected) ** 2 / expected).sum().item() < 25.0, counts


def test_plan_draws_nothing_in_eval_or_at_rate_zero():
    shuffle = LayerwiseShuffle(4, 0.9).eval()
    rng = torch.get_rng_state()
    assert shuffle.plan(5) == [None] * 4
    assert LayerwiseShuffle(4, 0.0).train().plan(5) == [None] * 4
    assert torch.equal(torch.get_rng_state(), rng)
    # the first layer is never shuffled, whatever the rate
    assert all(LayerwiseShuffle(4, 1.0).train().plan(5)[0] is None for _ in range(50))


class Spy(nn.Module):
    """A block that records what it sees and acts on each token independently."""

    def __init__(self, dims):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dims, dims), nn.GELU(), nn.Linear(dims, dims))
        self.seen = []

    def forward(self, hidden, residual):
        residual = torch.zeros_like(hidden) if residual is None else residual
        self.seen.append((hidden.detach().clone(), residual.detach().clone()))
        residual = hidden + residual
        return self.mlp(residual), residual


def test_shuffled_block_sees_permuted_tokens_and_outside_order_is_restored():
    torch.manual_seed(0)
    block = Spy(8)
    hidden, residual = torch.randn(3, 10, 8), torch.randn(3, 10, 8)
    plain = block(hidden, residual)
    perm = torch.randperm(10)
    shuffled = LayerwiseShuffle.apply_permuted(block, perm, hidden, residual)
    seen_hidden, seen_residual = block.seen[-1]
    # one permutation shared by the whole batch, applied to both streams
    assert torch.equal(seen_hidden, hidden[:, perm])
    assert torch.equal(seen_residual, residual[:, perm])
    for got, want in zip(shuffled, plain):  # a token-wise block is order-agnostic
        torch.testing.assert_close(got, want)


def force_shuffle(model: ShuffleMamba) -> ShuffleMamba:
    model.shuffle.probs = [1.0] * len(model.shuffle.probs)
    return model.train()


def test_forced_shuffle_with_tokenwise_blocks_changes_nothing():
    torch.manual_seed(0)
    model = ShuffleMamba(**SMALL)
    model.layers = nn.ModuleList(Spy(32) for _ in range(5))
    x = torch.randn(2, 3, 32, 32)
    expected = plain_forward(model.eval(), x)
    out = force_shuffle(model)(x)[0]
    torch.testing.assert_close(out, expected)
    # ... and the blocks really saw shuffled tokens
    first_token = [seen[0][0, 0] for seen in model.layers[1].seen]
    assert not torch.equal(first_token[0], first_token[-1])


def test_forced_shuffle_changes_a_mamba_model_and_gradients_flow():
    torch.manual_seed(0)
    model = ShuffleMamba(**SMALL)
    x = torch.randn(2, 3, 32, 32)
    plain = model.eval()(x)[0]
    out = force_shuffle(model)(x)[0]
    assert not torch.allclose(out, plain, atol=1e-4), 'a sequence model must see the order'
    out.square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_seeded_runs_repeat_exactly():
    model = force_shuffle(ShuffleMamba(**SMALL, shuffle_rate=1.0))
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outs.append(model(x)[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
