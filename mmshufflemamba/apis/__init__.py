"""What the ``tools/`` and ``demo/`` scripts need from the library, as mmseg/mmdet's
``apis``: nothing here exits the process; errors are :class:`InputError` (or the backbone's
``ValueError``), and the scripts decide the exit code.

:mod:`.codebases` is the one table of what differs between mmseg, mmdet and mmpretrain.
"""
from .codebases import CODEBASES, Codebase, codebase_of, padding_hint
from .dataset_config import innermost_dataset, nested_datasets
from .errors import InputError
from .inference import (checkpoint_has_classes, dataset_meta_from_config,
                        describe_preprocessing, load_rgb)
from .runner import (CheckpointMismatchError, ToolRunnerMixin, build_runner,
                     check_checkpoint_file, check_data_paths, finish_distributed,
                     init_cpu_distributed, prepare_config)
from .test_options import add_result_dump, apply_test_options

__all__ = [
    'CODEBASES', 'Codebase', 'codebase_of', 'innermost_dataset', 'nested_datasets',
    'padding_hint', 'InputError',
    'load_rgb', 'describe_preprocessing', 'dataset_meta_from_config',
    'checkpoint_has_classes', 'prepare_config', 'build_runner', 'init_cpu_distributed',
    'finish_distributed', 'check_data_paths', 'check_checkpoint_file',
    'CheckpointMismatchError', 'ToolRunnerMixin', 'apply_test_options', 'add_result_dump'
]
