"""Let torch >= 2.6 load mmengine checkpoints with ``weights_only=True``.

torch now unpickles checkpoints with an allow-list (``weights_only=True``), and mmengine
0.10.7 writes numpy scalars/arrays and its ``HistoryBuffer`` (message hub) into every
checkpoint, so ``--resume`` and ``load_from`` fail with "Unsupported global". Instead of
switching the protection off, this adds exactly what mmengine writes to torch's
allow-list; any other pickled class or function is still refused.

One entry needs care: ``HistoryBuffer.__getstate__`` pickles its statistics methods as
``getattr(HistoryBuffer, 'min')`` and the like. Allowing the real ``getattr`` would let a
crafted checkpoint reach arbitrary attributes (and from there, code), so the name
``builtins.getattr`` is bound to :func:`history_buffer_getattr`, which resolves only those
methods and raises for anything else.
"""
import inspect
import pickle
from typing import List

import numpy as np
import torch

__all__ = [
    'mmengine_checkpoint_globals', 'allow_mmengine_checkpoint_globals',
    'history_buffer_getattr'
]

# dtypes whose scalars/arrays mmengine's logs and meta may hold
_DEFAULT_STATISTICS = {'min', 'max', 'current', 'mean'}
_DTYPES = ('bool', 'uint8', 'int8', 'int16', 'int32', 'int64', 'uint32', 'uint64', 'float16',
           'float32', 'float64')


def history_buffer_getattr(obj: object, name: str) -> object:
    """``getattr`` restricted to the statistics methods of mmengine's ``HistoryBuffer``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    statistics = _DEFAULT_STATISTICS | set(HistoryBuffer._statistics_methods)
    method = vars(HistoryBuffer).get(name) if obj is HistoryBuffer else None
    if name not in statistics or not inspect.isfunction(method):
        raise pickle.UnpicklingError(
            f'Refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only the '
            f'statistics methods of mmengine.logging.HistoryBuffer may be looked up. '
            f'Load the file with weights_only=False only if you trust its source.')
    return method


def mmengine_checkpoint_globals() -> List[object]:
    """What (besides torch's own types) mmengine 0.10 checkpoints pickle, for the allow-list."""
    from mmengine.logging.history_buffer import HistoryBuffer
    numpy_core = getattr(np, '_core', None) or np.core  # numpy 2 / numpy 1
    allowed = [numpy_core.multiarray.scalar, numpy_core.multiarray._reconstruct, np.ndarray,
               np.dtype, HistoryBuffer, (history_buffer_getattr, 'builtins.getattr')]
    allowed += [type(np.dtype(name)) for name in _DTYPES]
    return allowed


def allow_mmengine_checkpoint_globals() -> None:
    """Add :func:`mmengine_checkpoint_globals` to torch's weights-only allow-list."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads with weights_only=False)
        add(mmengine_checkpoint_globals())
