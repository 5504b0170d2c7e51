from .checkpoint import allow_mmengine_checkpoint_globals, mmengine_checkpoint_globals

__all__ = ['allow_mmengine_checkpoint_globals', 'mmengine_checkpoint_globals']
from .benchmark import PeakResidentMemory, outputs_sum  # noqa: E402
from .model_io import TensorForward, build_model_from_config  # noqa: E402

__all__ += ['build_model_from_config', 'TensorForward', 'PeakResidentMemory', 'outputs_sum']
