from .pos_embed import resize_pos_embed

__all__ = ['resize_pos_embed']
from .convert import is_register_model, mmpretrain_to_reference, reference_to_mmpretrain  # noqa

__all__ += ['reference_to_mmpretrain', 'mmpretrain_to_reference', 'is_register_model']
