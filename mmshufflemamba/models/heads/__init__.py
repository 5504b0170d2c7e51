"""Classification heads. They subclass mmpretrain's heads, so they exist only where
mmpretrain is installed, and are imported when first asked for: by the registry (a
config's ``type='mmshufflemamba.RegisterClsHead'``, see ``mmshufflemamba.registry``) or by
name (``from mmshufflemamba.models import RegisterClsHead``). ``import mmshufflemamba``
never imports mmpretrain."""
import importlib.util

__all__ = []
if importlib.util.find_spec('mmpretrain') is not None:
    from .register_head import RegisterClsHead  # noqa: F401
    __all__ = ['RegisterClsHead']
