from .checkpoint import allow_mmengine_checkpoint_globals, mmengine_checkpoint_globals

__all__ = ['allow_mmengine_checkpoint_globals', 'mmengine_checkpoint_globals']
from .benchmark import PeakResidentMemory, outputs_sum  # noqa: E402
from .model_io import TensorForward, build_model_from_config  # noqa: E402

__all__ += ['build_model_from_config', 'TensorForward', 'PeakResidentMemory', 'outputs_sum']
from .runner import (CheckpointMismatchError, ToolRunnerMixin, add_result_dump,  # noqa: E402
                     apply_test_options, build_runner, check_checkpoint_file,
                     check_data_paths, finish_distributed, init_cpu_distributed,
                     prepare_config)

__all__ += [
    'prepare_config', 'build_runner', 'init_cpu_distributed', 'finish_distributed',
    'check_data_paths', 'check_checkpoint_file', 'CheckpointMismatchError',
    'ToolRunnerMixin', 'apply_test_options', 'add_result_dump'
]
