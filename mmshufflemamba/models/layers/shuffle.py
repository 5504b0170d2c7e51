"""Stochastic layer-wise shuffle (ShuffleMamba, arXiv 2408.17081).

In training, layer ``i`` of ``L`` (0-based) is shuffled with probability
``p_i = shuffle_rate * i / (L - 1)``. A shuffled layer sees its tokens in the order of one
random permutation, drawn once per layer per forward and shared by the batch: the hidden
states and the residual stream are gathered with it before the block and scattered back
with its inverse after, so everything outside the block keeps the original token order.
In eval mode, and for layers with ``p_i = 0``, nothing is drawn and nothing is shuffled.

Randomness comes from torch's default CPU generator (or the one given), so seeded runs
repeat exactly, on any device.
"""
from contextlib import nullcontext
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ['LayerwiseShuffle', 'shuffle_probabilities']

BlockFn = Callable[[Tensor, Optional[Tensor]], Tuple[Tensor, Tensor]]


def _host_tensors():
    """Where the draws are made: real CPU tensors, even inside a ``FakeTensorMode`` (whose
    tensors have no values to read), so that a model on a fake device (shape and device
    checks without the hardware) draws its plan as it would on the real one. Under
    ``torch.compile`` the draws are traced as they are (one graph break)."""
    if torch.compiler.is_compiling():
        return nullcontext()
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    return unset_fake_temporarily()


def shuffle_probabilities(num_layers: int, shuffle_rate: float) -> List[float]:
    """``[shuffle_rate * i / (num_layers - 1) for i in range(num_layers)]`` (0 for one layer)."""
    if not 0.0 <= shuffle_rate <= 1.0:
        raise ValueError(f'shuffle_rate must lie in [0, 1]; got {shuffle_rate}.')
    if num_layers == 1:
        return [0.0]
    return [shuffle_rate * i / (num_layers - 1) for i in range(num_layers)]


class LayerwiseShuffle(nn.Module):
    """Applies a block to randomly permuted tokens and restores their order.

    Args:
        num_layers: Depth ``L`` of the backbone.
        shuffle_rate: Probability for the last layer; in ``[0, 1]``.
        generator: Source of randomness; default: torch's global CPU generator.
    """

    def __init__(self,
                 num_layers: int,
                 shuffle_rate: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.shuffle_rate = shuffle_rate
        self.probs = shuffle_probabilities(num_layers, shuffle_rate)
        self.generator = generator

    def plan(self, num_tokens: int) -> List[Optional[Tensor]]:
        """Every layer's permutation for one forward (None: not shuffled), drawn at once:
        one Bernoulli draw per layer, then one permutation per shuffled layer.

        Draws nothing in eval mode or when every ``p_i`` is 0. One ``tolist`` for all the
        layers' decisions keeps a compiled training step to one graph break.
        """
        if not self.training or not any(self.probs):
            return [None] * len(self.probs)
        with _host_tensors():
            draws = torch.rand(len(self.probs), generator=self.generator).tolist()
            return [torch.randperm(num_tokens, generator=self.generator) if u < p else None
                    for u, p in zip(draws, self.probs)]

    def forward(self, block: BlockFn, hidden: Tensor, residual: Optional[Tensor],
                perm: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """``block(hidden, residual)``, on tokens permuted by ``perm`` (from :meth:`plan`)
        if it is given.

        Args:
            block: Maps ``(hidden, residual)`` ``(B, L, C)`` to the same.
            hidden: ``(B, L, C)``.
            residual: ``(B, L, C)`` or None before the first block.
            perm: ``(L,)`` permutation, or None.
        """
        if perm is None:
            return block(hidden, residual)
        return self.apply_permuted(block, perm.to(hidden.device), hidden, residual)

    @staticmethod
    def apply_permuted(block: BlockFn, perm: Tensor, hidden: Tensor,
                       residual: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Run ``block`` on tokens gathered by ``perm``; return them in the original order."""
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        hidden = hidden.index_select(1, perm)
        if residual is not None:
            residual = residual.index_select(1, perm)
        hidden, residual = block(hidden, residual)
        return hidden.index_select(1, inverse), residual.index_select(1, inverse)

    def extra_repr(self) -> str:
        return f'shuffle_rate={self.shuffle_rate}, num_layers={len(self.probs)}'
