"""Save every process's torch random state with each checkpoint and restore it on resume.

The layer-wise shuffle (its Bernoulli draws and permutations), drop-path and dropout draw
from torch's global generator. mmengine does not save that state, so a resumed run would
draw different permutations than an uninterrupted one. This hook stores the CPU (and
current CUDA device's) generator state of **every rank** in
``checkpoint['meta']['torch_rng_state'] = dict(world_size=W, ranks=[state of rank 0, ...])``
and, on ``--resume``, gives each rank its own state back right before the first resumed
iteration: after mmengine has replayed the data loader up to the resumed iteration (which
reproduces the numpy/python random state the data pipeline uses, and does not touch
torch's generator), so the run continues bit-identically.

Why every rank: with ``randomness=dict(diff_rank_seed=True)`` (the configs' setting, as
upstream's ``seed + rank``) each rank draws its own permutations and masks, so one saved
state (rank 0's) would make every rank repeat rank 0's draws after a resume.

Where the states are gathered: mmengine's ``Runner.save_checkpoint`` is ``master_only``, so
``before_save_checkpoint`` runs on rank 0 alone and cannot collect the other ranks' states.
But every rank *calls* ``runner.save_checkpoint`` (the ``CheckpointHook`` does so on all
ranks, for the periodic, last and best checkpoints alike), so this hook wraps that call on
every rank (in ``before_run``): the wrapper all-gathers the ranks' states, one collective
per saved checkpoint, and rank 0 writes them. A checkpoint saved by a call that bypasses
the wrapper on a multi-process run holds rank 0's state only (the others are ``None``).

A checkpoint written with another number of processes cannot give each rank its own
stream back: the resumed run then keeps its fresh per-rank seeds and says, in a warning,
that its draws will not repeat an uninterrupted run. Checkpoints written before the states
were per rank (one ``dict(cpu=..., cuda=...)``) are read as a one-process checkpoint.
"""
import functools
from typing import List, Optional

import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook

from mmshufflemamba.registry import HOOKS

__all__ = ['RNGStateHook']


def _local_state() -> dict:
    """This process's torch generator states: CPU, and the current CUDA device's."""
    state = dict(cpu=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_state(state: dict) -> None:
    torch.set_rng_state(state['cpu'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every device's state
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """See the module docstring. Add ``dict(type='mmshufflemamba.RNGStateHook')`` to
    ``custom_hooks``."""

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending: Optional[dict] = None
        self._gathered: Optional[List[dict]] = None

    def before_run(self, runner) -> None:
        save = runner.save_checkpoint
        if getattr(save, '_gathers_rng_state', False):
            return

        @functools.wraps(save)
        def save_checkpoint(*args, **kwargs):
            # every rank is here (mmengine's body is master_only): gather, rank 0 writes
            self._gathered = all_gather_object(_local_state())
            try:
                return save(*args, **kwargs)
            finally:
                self._gathered = None

        save_checkpoint._gathers_rng_state = True
        runner.save_checkpoint = save_checkpoint

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        rank, world_size = get_dist_info()
        if self._gathered is not None:
            states = list(self._gathered)
        else:  # not called through the wrapper: only this rank's state is known here
            states = [None] * world_size
            states[rank] = _local_state()
            if world_size > 1:
                runner.logger.warning(
                    'RNGStateHook: runner.save_checkpoint was called without the hook\'s '
                    'wrapper, so this checkpoint holds the torch random state of rank '
                    f'{rank} only; the other ranks will not repeat their draws on resume.')
        checkpoint.setdefault('meta', {})['torch_rng_state'] = dict(
            world_size=world_size, ranks=states)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:  # load_from starts a new run: its own seed, not the old state
            return
        saved = checkpoint.get('meta', {}).get('torch_rng_state')
        if saved is None:
            runner.logger.warning('The checkpoint has no torch_rng_state (written without '
                                  'RNGStateHook): the resumed run draws new shuffle '
                                  'permutations and will not repeat an uninterrupted run.')
            return
        if 'ranks' not in saved:  # one process's state, as the hook saved it before
            saved = dict(world_size=1, ranks=[saved])
        rank, world_size = get_dist_info()
        if saved['world_size'] != world_size:
            runner.logger.warning(
                f'The checkpoint holds the torch random states of {saved["world_size"]} '
                f'process(es); this run has {world_size}. They cannot be given back rank '
                f'by rank, so every rank keeps its fresh seed (randomness.seed + rank with '
                f'diff_rank_seed) and the resumed run\'s shuffle permutations and drop-path '
                f'masks will not repeat an uninterrupted run. Resume with '
                f'{saved["world_size"]} process(es) to repeat it exactly.')
            return
        self._pending = saved['ranks'][rank]
        if self._pending is None:
            runner.logger.warning(
                f'The checkpoint has no torch random state for rank {rank}: this rank\'s '
                f'draws after the resume will not repeat an uninterrupted run.')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is None:
            return
        _set_state(self._pending)
        self._pending = None
