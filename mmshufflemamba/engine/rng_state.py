"""Save torch's random state with every checkpoint and restore it on resume.

The layer-wise shuffle (its Bernoulli draws and permutations), drop-path and dropout draw
from torch's global generator. mmengine does not save that state, so a resumed run would
draw different permutations than an uninterrupted one. This hook stores the CPU (and
CUDA) generator states in ``checkpoint['meta']['torch_rng_state']`` and puts them back
right before the first resumed iteration: after mmengine has replayed the data loader up
to the resumed iteration (which reproduces the numpy/python random state the data
pipeline uses, and does not touch torch's generator), so the run continues bit-identically.
"""
from typing import Optional

import torch
from mmengine.hooks import Hook

from mmshufflemamba.registry import HOOKS

__all__ = ['RNGStateHook']


@HOOKS.register_module()
class RNGStateHook(Hook):
    """See the module docstring. Add ``dict(type='mmshufflemamba.RNGStateHook')`` to
    ``custom_hooks``."""

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = dict(cpu=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint.setdefault('meta', {})['torch_rng_state'] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:  # load_from starts a new run: its own seed, not the old state
            return
        self._pending = checkpoint.get('meta', {}).get('torch_rng_state')
        if self._pending is None:
            runner.logger.warning('The checkpoint has no torch_rng_state (written without '
                                  'RNGStateHook): the resumed run draws new shuffle '
                                  'permutations and will not repeat an uninterrupted run.')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending['cpu'])
        if 'cuda' in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending['cuda'])
        self._pending = None
