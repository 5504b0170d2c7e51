from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403

# the heads import mmpretrain (seconds): on first use only (mmshufflemamba.models.heads)
_HEADS = ('RegisterClsHead', )


def __getattr__(name: str):
    if name in _HEADS:
        from . import heads
        return getattr(heads, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
