from .shuffle_mamba import ShuffleMamba

__all__ = ['ShuffleMamba']
