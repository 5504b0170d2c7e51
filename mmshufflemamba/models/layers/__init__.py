from .block import DropPath, MambaBlock
from .mixer import BiMambaMixer, use_scan_backend
from .norm import RMSNorm, build_norm
from .pyramid import LayerNorm2d, SimplePyramid, build_norm2d
from .shuffle import LayerwiseShuffle, shuffle_probabilities

__all__ = [
    'BiMambaMixer', 'use_scan_backend', 'MambaBlock', 'DropPath', 'RMSNorm', 'build_norm',
    'LayerwiseShuffle', 'shuffle_probabilities', 'SimplePyramid', 'LayerNorm2d', 'build_norm2d'
]
