"""Let torch >= 2.6 load mmengine checkpoints with ``weights_only=True``.

torch now unpickles checkpoints with an allow-list (``weights_only=True``), and mmengine
0.10.7 writes numpy scalars/arrays and its ``HistoryBuffer`` (message hub) into every
checkpoint, so ``--resume`` and ``load_from`` fail with "Unsupported global". Instead of
switching the protection off, this adds exactly those types to torch's allow-list; any
other pickled class is still refused.
"""
from typing import List

import numpy as np
import torch

__all__ = ['mmengine_checkpoint_globals', 'allow_mmengine_checkpoint_globals']

# dtypes whose scalars/arrays mmengine's logs and meta may hold
_DTYPES = ('bool', 'uint8', 'int8', 'int16', 'int32', 'int64', 'float16', 'float32',
           'float64')


def mmengine_checkpoint_globals() -> List[object]:
    """The classes and functions (besides torch's own) that mmengine checkpoints pickle."""
    from mmengine.logging.history_buffer import HistoryBuffer
    numpy_core = getattr(np, '_core', None) or np.core  # numpy 2 / numpy 1
    allowed = [numpy_core.multiarray.scalar, numpy_core.multiarray._reconstruct, np.ndarray,
               np.dtype, HistoryBuffer]
    allowed += [type(np.dtype(name)) for name in _DTYPES]
    return allowed


def allow_mmengine_checkpoint_globals() -> None:
    """Add :func:`mmengine_checkpoint_globals` to torch's weights-only allow-list."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads with weights_only=False)
        add(mmengine_checkpoint_globals())
