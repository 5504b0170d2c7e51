from .checkpoint_fit import FitTarget, checkpoint_norm_type, fit_checkpoint, load_pretrained
from .convert import (describe_reference, is_register_model, mmpretrain_to_reference,
                      reference_to_mmpretrain)
from .pos_embed import resize_pos_embed, split_pos_embed
from .token_layout import (CLS_TOKEN_LAYOUTS, TokenLayout, cls_token_index, register_indices,
                           tokens_to_map)
from .weight_init import INIT_SCHEMES, init_vim_weights

__all__ = [
    'resize_pos_embed', 'split_pos_embed', 'TokenLayout', 'cls_token_index',
    'register_indices', 'tokens_to_map', 'CLS_TOKEN_LAYOUTS', 'reference_to_mmpretrain',
    'mmpretrain_to_reference', 'is_register_model', 'describe_reference', 'FitTarget',
    'checkpoint_norm_type', 'fit_checkpoint', 'load_pretrained', 'INIT_SCHEMES',
    'init_vim_weights'
]
