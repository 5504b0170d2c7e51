from .shuffle_mamba import ShuffleMamba
from .shuffle_mamba_adapter import ShuffleMambaAdapter

__all__ = ['ShuffleMamba', 'ShuffleMambaAdapter']
