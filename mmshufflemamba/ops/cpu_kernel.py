"""Build and load the compiled CPU selective scan (``csrc/selective_scan_cpu.cpp``).

The kernel is compiled with ``torch.utils.cpp_extension`` the first time it is needed (or by
``python -m mmshufflemamba.ops.build``, which ``tools/install.sh`` runs) and cached in
``$MMSHUFFLEMAMBA_BUILD_DIR`` (default ``~/.cache/mmshufflemamba/<torch>-<python>-<cpu>``);
later processes only import it. The directory name carries the torch version and the CPU
instruction set compiled for, so a torch upgrade or a node of another CPU generation builds
its own copy instead of loading an incompatible one.

Set ``MMSHUFFLEMAMBA_COMPILED_SCAN=0`` to use the PyTorch scan instead. When the build
fails (typically: no C++ compiler), one warning says why and the PyTorch scan is used.
"""
import functools
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple

import torch

__all__ = ['load_cpu_kernel', 'build_directory', 'ENV_SWITCH']

ENV_SWITCH = 'MMSHUFFLEMAMBA_COMPILED_SCAN'
_SOURCE = Path(__file__).with_name('csrc') / 'selective_scan_cpu.cpp'
_NAME = 'mmshufflemamba_scan_cpu'


def _instruction_set() -> Tuple[str, List[str]]:
    """The CPU capability torch dispatches to here, and the compiler flags that match it."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = {
        'AVX512': ['-mavx512f', '-mavx512dq', '-mavx512vl', '-mavx2', '-mfma',
                   '-mprefer-vector-width=512'],
        'AVX2': ['-mavx2', '-mfma'],
    }.get(capability, [])
    return capability.lower(), flags


def build_directory() -> Path:
    """Where the compiled kernel for this torch, Python and CPU lives."""
    if os.environ.get('MMSHUFFLEMAMBA_BUILD_DIR'):
        return Path(os.environ['MMSHUFFLEMAMBA_BUILD_DIR'])
    cache = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache'))
    isa, _ = _instruction_set()
    python = f'py{sys.version_info.major}{sys.version_info.minor}'
    return cache / 'mmshufflemamba' / f'torch{torch.__version__}-{python}-{isa}'


def _compile(verbose: bool) -> ModuleType:
    # Importing cpp_extension logs a CUDA_HOME warning on machines without CUDA; irrelevant
    # for a CPU extension, so that one import runs with the logger at ERROR.
    logger = logging.getLogger('torch.utils.cpp_extension')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        logger.setLevel(level)
    compiler = os.environ.get('CXX', 'c++')
    if shutil.which(compiler) is None:
        raise RuntimeError(f'no C++ compiler: {compiler!r} was not found')
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob(f'{_NAME}*.so')):
        print(f'mmshufflemamba: compiling the CPU selective scan into {directory} '
              '(first use only, about a minute)', file=sys.stderr, flush=True)
    _, flags = _instruction_set()
    return load(name=_NAME, sources=[str(_SOURCE)], build_directory=str(directory),
                extra_cflags=['-O3', '-fopenmp', '-fno-trapping-math', '-fno-signed-zeros', '-fassociative-math', *flags], extra_ldflags=['-fopenmp'],
                verbose=verbose)


@functools.lru_cache(maxsize=None)
def load_cpu_kernel(verbose: bool = False) -> Optional[ModuleType]:
    """The compiled kernel module, or None (after one warning) where it cannot be built.

    Returns None without a warning when ``MMSHUFFLEMAMBA_COMPILED_SCAN=0``.
    """
    if os.environ.get(ENV_SWITCH, '1') == '0':
        return None
    try:
        return _compile(verbose)
    except Exception as err:  # compiler missing or failing, ninja missing, bad cache, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(
            'mmshufflemamba could not build its compiled CPU selective scan, so the slower '
            f'PyTorch scan is used ({type(err).__name__}: {reason}). Install a C++ compiler '
            '(e.g. `apt install g++`) and ninja, then run `python -m '
            f'mmshufflemamba.ops.build --verbose` (it shows the compiler output); set {ENV_SWITCH}=0 to silence this warning.',
            RuntimeWarning, stacklevel=2)
        return None

