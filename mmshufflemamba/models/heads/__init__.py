"""Classification heads. They subclass mmpretrain's heads, so they exist only where
mmpretrain is installed (``import mmshufflemamba`` never needs it)."""
import importlib.util

__all__ = []
if importlib.util.find_spec('mmpretrain') is not None:
    from .register_head import RegisterClsHead  # noqa: F401
    __all__ = ['RegisterClsHead']
