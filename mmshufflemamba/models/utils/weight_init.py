"""Initialisation of a plain Vision Mamba backbone, as upstream's models do it."""
import math
from typing import Dict

import torch
from torch import nn

__all__ = ['INIT_SCHEMES', 'init_vim_weights']

INIT_SCHEMES = ('vim', 'shufflemamba')


def init_vim_weights(patch_proj: nn.Conv2d, layers: nn.ModuleList,
                     tokens: Dict[str, nn.Parameter], scheme: str = 'vim') -> None:
    """Initialise the backbone's parameters in place, drawing from torch's generator.

    ``'vim'`` (Vim and Mamba-Reg): trunc-normal(0.02) tokens and position embeddings,
    lecun-normal patch conv, PyTorch's default linears with zero biases (but the step-size
    bias, ``_no_reinit``), ``out_proj`` rescaled by ``1/sqrt(depth)``. ``'shufflemamba'``
    (upstream ShuffleMamba's plain models, ``models_shuffle.py``): as ``'vim'``, then every
    linear of the blocks trunc-normal(0.02) with zero bias, the step-size bias too (every
    step size starts at ``softplus(0)``), a zero class token, ``out_proj`` rescaled again.

    Args:
        patch_proj: The patch embedding conv.
        layers: The Mamba blocks.
        tokens: ``pos_embed``, ``cls_token``, ``register_tokens``, ``pos_embed_reg`` (those
            the backbone has), in that order.
        scheme: One of :data:`INIT_SCHEMES`.
    """
    for token in tokens.values():
        nn.init.trunc_normal_(token, std=0.02)
    fan_in = patch_proj.in_channels * patch_proj.kernel_size[0] * patch_proj.kernel_size[1]
    # lecun normal: truncated normal with variance 1/fan_in (0.8796 corrects truncation)
    nn.init.trunc_normal_(patch_proj.weight, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
    nn.init.zeros_(patch_proj.bias)
    for module in layers.modules():
        if isinstance(module, nn.Linear) and module.bias is not None \
                and not getattr(module.bias, '_no_reinit', False):
            nn.init.zeros_(module.bias)
    if scheme == 'shufflemamba':  # models_shuffle.py: segm_init_weights
        for module in layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)  # the step-size bias too
        if 'cls_token' in tokens:
            nn.init.zeros_(tokens['cls_token'])
    for layer in layers:
        # GPT-2 style: scale the residual branch's output projection by 1/sqrt(depth)
        weight = layer.mixer.out_proj.weight
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        with torch.no_grad():
            weight /= math.sqrt(len(layers))
