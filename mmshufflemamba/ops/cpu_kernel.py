"""Build and load the compiled CPU kernels (``csrc/``: the selective scan, the fused
bidirectional mixer and RMSNorm).

The kernel is compiled with ``torch.utils.cpp_extension`` the first time it is needed (or by
``python -m mmshufflemamba.ops.build``, which ``tools/install.sh`` runs) and cached in
``$MMSHUFFLEMAMBA_BUILD_DIR`` (default
``~/.cache/mmshufflemamba/<torch>-<python>-<cpu>-<source hash>``); later processes only
import it. The directory name carries the torch version, the CPU instruction set compiled
for and a hash of the source and flags, so a torch upgrade, a node of another CPU
generation or another version of the source builds its own copy instead of loading an
incompatible one.

``MMSHUFFLEMAMBA_SCAN_BACKEND=torch`` runs the PyTorch scan instead (the kernel is then never
built). When the build fails (typically: no C++ compiler), one warning says why and the
PyTorch scan is used.
"""
import functools
import hashlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Tuple

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ['load_cpu_kernel', 'build_directory', 'plain_eager_call']

_SOURCE_DIR = Path(__file__).with_name('csrc')
_SOURCES = ('selective_scan_cpu.cpp', 'bimamba_cpu.cpp', 'rms_norm_cpu.cpp', 'module.cpp')
_HEADERS = ('cpu_math.h', 'kernels.h', 'scan_core.h')
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


def _compiler_flags() -> List[str]:
    # -fopenmp: at::parallel_for is OpenMP in torch's builds (serial without it);
    # -fno-trapping-math: lets GCC vectorise the exp/log polynomials; the last two allow
    # reassociating the sums over the state index.
    _, isa_flags = _instruction_set()
    return ['-O3', '-fopenmp', '-fno-trapping-math', '-fno-signed-zeros',
            '-fassociative-math', *isa_flags]


def build_directory() -> Path:
    """Where the kernel for this source, torch, Python and CPU is built and cached.

    The name ends in a hash of the source and the compiler flags: every checkout with the
    same source shares one build, and a changed source gets a directory of its own.
    """
    if os.environ.get('MMSHUFFLEMAMBA_BUILD_DIR'):
        return Path(os.environ['MMSHUFFLEMAMBA_BUILD_DIR'])
    cache = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache'))
    isa, _ = _instruction_set()
    python = f'py{sys.version_info.major}{sys.version_info.minor}'
    code = b''.join((_SOURCE_DIR / name).read_bytes() for name in _SOURCES + _HEADERS)
    digest = hashlib.sha1(code + ' '.join(_compiler_flags()).encode())
    return (cache / 'mmshufflemamba' /
            f'torch{torch.__version__}-{python}-{isa}-{digest.hexdigest()[:12]}')


def _stage_sources(directory: Path):
    """The sources copied into the build directory, so that ninja sees one path and mtime
    whichever checkout asks (an unchanged copy is left alone; replacing one is atomic)."""
    staged = []
    for name in _SOURCES + _HEADERS:
        target = directory / name
        code = (_SOURCE_DIR / name).read_bytes()
        if not target.exists() or target.read_bytes() != code:
            tmp = directory / f'.{name}.{os.getpid()}'
            tmp.write_bytes(code)
            os.replace(tmp, target)
        if name in _SOURCES:
            staged.append(str(target))
    return staged


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
    if shutil.which('ninja') is None:  # pip's ninja, when its bin directory is not on PATH
        try:
            import ninja
            os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + os.environ.get('PATH', '')
        except ImportError:
            raise RuntimeError('ninja was not found (pip install ninja)') from None
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob(f'{_NAME}*.so')):
        print(f'mmshufflemamba: compiling the CPU selective scan into {directory} '
              '(first use only, about a minute)', file=sys.stderr, flush=True)
    return load(name=_NAME, sources=_stage_sources(directory),
                build_directory=str(directory), extra_cflags=_compiler_flags(),
                extra_ldflags=['-fopenmp'], verbose=verbose)


@functools.lru_cache(maxsize=None)
def load_cpu_kernel(verbose: bool = False) -> Optional[ModuleType]:
    """The compiled kernel module, or None (after one warning) where it cannot be built."""
    try:
        return _compile(verbose)
    except Exception as err:  # compiler missing or failing, ninja missing, bad cache, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(
            'mmshufflemamba could not build its compiled CPU selective scan, so the slower '
            f'PyTorch scan is used ({type(err).__name__}: {reason}). Install a C++ compiler '
            '(e.g. `apt install g++`) and ninja, then run `python -m '
            'mmshufflemamba.ops.build --verbose` (it shows the compiler output); set '
            'MMSHUFFLEMAMBA_SCAN_BACKEND=torch to silence this warning.',
            RuntimeWarning, stacklevel=2)
        return None


def plain_eager_call(*tensors: torch.Tensor) -> bool:
    """Whether a call on ``tensors`` is plain eager PyTorch: not seen by torch.compile or
    torch.export, TorchScript tracing, a FakeTensor or another dispatch mode, a torch.func
    transform (grad, vmap, jacrev) or forward-mode AD, nor made on a tensor subclass other
    than ``nn.Parameter``. Only such calls may run the kernels through an
    ``autograd.Function`` (the others need a registered op with a fake implementation, or
    torch ops)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or
                is_in_torch_dispatch_mode() or
                torch._C._functorch.peek_interpreter_stack() is not None or
                torch.autograd.forward_ad._current_level >= 0 or
                any(type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter
                    for t in tensors))
