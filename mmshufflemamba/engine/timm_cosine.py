"""The learning-rate schedule of the reference scripts: timm's cosine, stepped per epoch.

Vim, Mamba-Reg and ShuffleMamba train with DeiT's loop and timm 0.4.12's
``CosineLRScheduler`` (``t_initial`` = the run's epochs, no warm-up prefix): for epoch
index ``t``::

    f(t) = warmup_lr + t * (base - warmup_lr) / warmup_epochs          t < warmup_epochs
    f(t) = min_lr + (base - min_lr) * (1 + cos(pi * t / epochs)) / 2   otherwise

The scheduler starts at ``f(0)`` and the loop calls ``step(epoch)`` *after* each epoch, so
epoch ``e`` trains at ``f(max(e - 1, 0))``: epochs 0 and 1 both at the warm-up lr, and the
cosine is over the whole run, warm-up included. mmengine's ``LinearLR`` + ``CosineAnnealingLR``
differ: per-iteration warm-up, and a cosine over the epochs after it (at epoch 150 of 300 with
30 warm-up epochs: 0.588 of the peak lr instead of timm's 0.507).
"""
import math

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler

from mmshufflemamba.registry import PARAM_SCHEDULERS

__all__ = ['TimmCosineLR']


@PARAM_SCHEDULERS.register_module()
class TimmCosineLR(LRSchedulerMixin, _ParamScheduler):
    """timm's per-epoch cosine with linear warm-up, stepped as the reference loops step it.

    Args:
        optimizer: The optimizer (wrapper); each group's lr is its own ``base``.
        epochs: The run's epochs (timm's ``t_initial``).
        warmup_epochs: Epochs of linear warm-up (``--warmup-epochs``).
        warmup_lr: Absolute lr the warm-up starts from (``--warmup-lr``).
        min_lr: Absolute lr the cosine ends at (``--min-lr``).
    """

    def __init__(self,
                 optimizer,
                 epochs: int,
                 warmup_epochs: int = 0,
                 warmup_lr: float = 0.0,
                 min_lr: float = 0.0,
                 begin: int = 0,
                 end: int = INF,
                 last_step: int = -1,
                 by_epoch: bool = True,
                 verbose: bool = False):
        if not by_epoch:
            raise ValueError("TimmCosineLR is epoch-based, as timm's scheduler in the "
                             'reference scripts; use by_epoch=True.')
        if epochs <= 0 or not 0 <= warmup_epochs < epochs:
            raise ValueError(f'need 0 <= warmup_epochs < epochs; got {warmup_epochs} and '
                             f'{epochs}.')
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step,
                         by_epoch=True, verbose=verbose)

    def timm_lr(self, t: int, base: float) -> float:
        """timm 0.4.12 ``CosineLRScheduler._get_lr`` for epoch index ``t``."""
        if t < self.warmup_epochs:
            return self.warmup_lr + t * (base - self.warmup_lr) / self.warmup_epochs
        return self.min_lr + 0.5 * (base - self.min_lr) * (1 + math.cos(math.pi * t /
                                                                        self.epochs))

    def _get_value(self):
        t = max(self.last_step - 1, 0)  # epoch e trains at f(e - 1): step(e) after epoch e
        return [self.timm_lr(t, base) for base in self.base_values]
