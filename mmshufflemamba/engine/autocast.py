"""Mixed precision on any device: the forward pass under ``torch.autocast``.

mmengine's ``AmpOptimWrapper`` asserts a GPU. ``AutocastOptimWrapper`` runs the forward
pass (data preprocessing, model, loss) under ``torch.autocast`` on the model's device,
bfloat16 by default, which needs no loss scaling. The selective scan disables autocast
inside and keeps its state in float32; the blocks keep the residual stream in float32
(``residual_in_fp32``).
"""
from contextlib import contextmanager
from typing import Optional, Union

import torch
from mmengine.optim import OptimWrapper
from torch import nn

from mmshufflemamba.registry import OPTIM_WRAPPERS

__all__ = ['AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward context is ``torch.autocast``.

    Args:
        dtype: ``'bfloat16'`` (default) or ``'float16'`` (float16 has no loss scaling
            here: use mmengine's ``AmpOptimWrapper`` for it on GPUs).
        device_type: Autocast device; default: the device of the model's parameters.
        **kwargs: ``OptimWrapper`` arguments (``optimizer``, ``clip_grad``, ...).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = 'bfloat16',
                 device_type: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if self.cast_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f'AutocastOptimWrapper dtype must be bfloat16 or float16; '
                             f'got {dtype}.')
        self.device_type = device_type

    @contextmanager
    def optim_context(self, model: nn.Module):
        device_type = self.device_type or next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type=device_type,
                                                          dtype=self.cast_dtype):
            yield
