"""Compile the Triton selective scan's kernels for GPUs this machine does not have.

    python3 benchmarks/triton_compile_check.py [--arch 80 90] [--workers 2] [--table]

No GPU is needed: ``triton.compile`` builds each kernel for ``GPUTarget('cuda', arch, 32)``
down to PTX and cubin, and the ``ptxas`` that ships inside Triton (``ptxas -v``) reports
the registers, spills and stack each kernel needs. Nothing is launched.

Which specialisations: the five kernels of :mod:`mmshufflemamba.ops.triton_scan_kernels`
as :mod:`mmshufflemamba.ops.triton_scan` launches them (its ``CHUNK``, ``NUM_WARPS`` and
``REGISTER_LIMITS``, ``BLOCK_N = 16`` for Vim's ``d_state``), for float32, float16, bfloat16 and float64
inputs, and every ``BLOCK_D`` the launcher can choose (4, or 2 in float64, halved down to
1 for grouped B/C), at ``sm_80`` and ``sm_90``. The on/off features (``B_VAR``, ``C_VAR``,
``HAS_D``, ``HAS_Z``, ``HAS_BIAS``, ``SOFTPLUS``) are independent ``if constexpr``
branches: each dtype and block size is compiled with every feature on (every branch in,
the most registers) and, at the largest block, every feature off; in float32 each feature
is also turned off alone. The carry kernel is compiled in the three modes the launcher
uses (forward; backward with and without the last state's gradient).

Pointer dtypes follow the launcher: inputs, outputs and their gradients in the input
dtype; ``A``, ``D`` and ``delta_bias`` as the mixers pass them (float32, float64 with
float64 inputs); states, checkpoints and partial sums in the compute dtype; an absent
optional input is passed as ``u`` (the input dtype).

Exit status 1 if a kernel fails to compile or spills registers. ``--table`` prints the
per-kernel table of ``benchmarks/README.md`` (all features on, the largest ``BLOCK_D``)
with the occupancy the registers and shared memory allow.
"""
import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, NamedTuple, Tuple

KERNEL_FEATURES = {
    'chunk_end_states_kernel': ('B_VAR', 'HAS_BIAS', 'SOFTPLUS'),
    'chunk_scan_forward_kernel': ('B_VAR', 'C_VAR', 'HAS_D', 'HAS_Z', 'HAS_BIAS', 'SOFTPLUS'),
    'chunk_adjoint_parts_kernel': ('C_VAR', 'HAS_Z', 'HAS_BIAS', 'SOFTPLUS'),
    'chunk_scan_backward_kernel': ('B_VAR', 'C_VAR', 'HAS_D', 'HAS_Z', 'HAS_BIAS',
                                   'SOFTPLUS'),
}
# the carry kernel's modes: forward states; backward adjoints without / with grad_last
CARRY_MODES = (dict(HAS_INIT=False, STORE_LAST=True, REVERSE=False),
               dict(HAS_INIT=False, STORE_LAST=False, REVERSE=True),
               dict(HAS_INIT=True, STORE_LAST=False, REVERSE=True))
DTYPES = ('fp32', 'fp16', 'bf16', 'fp64')
INPUT_DTYPE_ROLES = {'delta_ptr', 'u_ptr', 'z_ptr', 'B_ptr', 'C_ptr', 'grad_y_ptr', 'y_ptr',
                     'grad_u_ptr', 'grad_delta_ptr', 'grad_z_ptr'}
# optional inputs (pointer name -> the feature that makes it present); absent, it is u
OPTIONAL = {'bias_ptr': 'HAS_BIAS', 'D_ptr': 'HAS_D', 'z_ptr': 'HAS_Z', 'grad_z_ptr': 'HAS_Z',
            'grad_D_ptr': 'HAS_D', 'grad_bias_ptr': 'HAS_BIAS', 'init_ptr': 'HAS_INIT',
            'last_ptr': 'STORE_LAST'}
BLOCK_N = 16  # d_state 16 (Vim, Mamba)

# per SM: registers, threads, resident blocks, shared memory (bytes) usable by blocks
GPUS = {80: ('A100', 65536, 2048, 32, 164 * 1024), 90: ('H100/H200', 65536, 2048, 32,
                                                        228 * 1024)}


class Spec(NamedTuple):
    kernel: str
    arch: int
    dtype: str
    block_d: int
    flags: Tuple[Tuple[str, bool], ...]

    def label(self) -> str:
        on = [k for k, v in self.flags if v]
        off = [k for k, v in self.flags if not v]
        what = 'all on' if not off else 'all off' if not on else 'without ' + ','.join(off)
        return (f'{self.kernel} sm_{self.arch} {self.dtype} BLOCK_D={self.block_d} '
                f'{what}')


def launcher_constants() -> Tuple[int, int, int]:
    from mmshufflemamba.ops import triton_scan
    return triton_scan.CHUNK, triton_scan.BLOCK_D, triton_scan.NUM_WARPS


def block_sizes(dtype: str) -> List[int]:
    """Every BLOCK_D the launcher can choose for inputs of ``dtype``: its largest, halved
    down to 1 (for grouped B/C)."""
    from mmshufflemamba.ops import triton_scan
    largest = triton_scan.FP64_BLOCK_D if dtype == 'fp64' else triton_scan.BLOCK_D
    return [largest >> i for i in range(largest.bit_length())]


def specs(archs: List[int]) -> List[Spec]:
    """The specialisations compiled (see the module docstring)."""
    out = []
    for arch in archs:
        for kernel, features in KERNEL_FEATURES.items():
            on = tuple((f, True) for f in features)
            off = tuple((f, False) for f in features)
            for dtype in DTYPES:
                blocks = block_sizes(dtype)
                out += [Spec(kernel, arch, dtype, b, on) for b in blocks]
                out.append(Spec(kernel, arch, dtype, blocks[0], off))
            for f in features:
                out.append(Spec(kernel, arch, 'fp32', block_sizes('fp32')[0],
                                tuple((g, g != f) for g in features)))
        for dtype in ('fp32', 'fp64'):  # the carry kernel reads compute-dtype data only
            for mode in CARRY_MODES:
                out += [Spec('carry_kernel', arch, dtype, b, tuple(mode.items()))
                        for b in block_sizes(dtype)]
    return out


def signature(spec: Spec, kernel) -> Tuple[Dict[str, str], Dict[str, object]]:
    """Triton signature and constexprs of ``spec`` for ``kernel`` (a JITFunction)."""
    import triton.language as tl
    chunk, _, _ = launcher_constants()
    flags = dict(spec.flags)
    compute = 'fp64' if spec.dtype == 'fp64' else 'fp32'
    constexprs = dict(flags, BLOCK_D=spec.block_d, BLOCK_N=BLOCK_N,
                      COMPUTE=tl.float64 if compute == 'fp64' else tl.float32)
    if 'CHUNK' in kernel.arg_names:
        constexprs['CHUNK'] = chunk
    sig = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = 'constexpr'
        elif not name.endswith('_ptr'):
            sig[name] = 'i32'
        elif name in OPTIONAL and not flags.get(OPTIONAL[name], True):
            sig[name] = '*' + spec.dtype  # absent: the launcher passes u
        elif name in INPUT_DTYPE_ROLES:
            sig[name] = '*' + spec.dtype
        else:
            sig[name] = '*' + compute
    return sig, constexprs


class Result(NamedTuple):
    spec: Spec
    error: str
    registers: int
    spill_bytes: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int


_PTXAS_USED = re.compile(r'Used (\d+) registers')
_PTXAS_SPILL = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, '
                          r'(\d+) bytes spill loads')


@functools.lru_cache(maxsize=None)
def compiled_kernels():
    """A copy of the kernel module decorated for the compiler, whatever mode Triton's
    interpreter switch is in (the package's own copy may be decorated for it)."""
    import importlib.util

    import triton

    from mmshufflemamba.ops import triton_scan_kernels
    runtime = triton.knobs.runtime
    # a knob assigned once stops reading TRITON_INTERPRET: afterwards put back what was
    # there, an assigned value or none (reading the environment again)
    pinned = runtime.__dict__.get('interpret')
    runtime.interpret = False
    try:
        spec = importlib.util.spec_from_file_location('compiled_scan_kernels',
                                                      triton_scan_kernels.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if pinned is None:
            del runtime.interpret
        else:
            runtime.interpret = pinned
    return module


def compile_one(spec: Spec) -> Result:
    """Compile ``spec`` to cubin and read ``ptxas -v`` on its PTX."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mmshufflemamba.ops.triton_scan import REGISTER_LIMITS
    _, _, num_warps = launcher_constants()
    kernel = getattr(compiled_kernels(), spec.kernel)
    sig, constexprs = signature(spec, kernel)
    compute = torch.float64 if spec.dtype == 'fp64' else torch.float32
    options = dict(num_warps=num_warps)
    if (spec.kernel, compute) in REGISTER_LIMITS:
        options['maxnreg'] = REGISTER_LIMITS[spec.kernel, compute]
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                                  target=GPUTarget('cuda', spec.arch, 32), options=options)
    except Exception as err:  # a compile error is the finding; report it, go on
        return Result(spec, f'{type(err).__name__}: {err}'.splitlines()[0], 0, 0, 0, 0,
                      num_warps)
    ptxas = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin',
                         'ptxas')
    gpu = 'sm_90a' if spec.arch == 90 else f'sm_{spec.arch}'
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, 'kernel.ptx')
        with open(ptx, 'w') as f:
            f.write(compiled.asm['ptx'])
        proc = subprocess.run([ptxas, '-v', f'--gpu-name={gpu}', ptx, '-o',
                               os.path.join(tmp, 'kernel.cubin')], capture_output=True,
                              text=True)
    report = proc.stdout + proc.stderr
    used, spill = _PTXAS_USED.search(report), _PTXAS_SPILL.search(report)
    if proc.returncode or used is None or spill is None:
        return Result(spec, f'ptxas: {report.strip()[-300:]}', 0, 0, 0, 0, num_warps)
    return Result(spec, '', int(used.group(1)), int(spill.group(2)) + int(spill.group(3)),
                  int(spill.group(1)), compiled.metadata.shared, num_warps)


def occupancy(result: Result) -> Tuple[int, float]:
    """(resident blocks per SM, fraction of the SM's warps) from registers and shared
    memory (registers are allocated per warp in units of 256)."""
    _, regs, threads, max_blocks, smem = GPUS[result.spec.arch]
    warps = result.num_warps
    regs_per_warp = -(-result.registers * 32 // 256) * 256
    blocks = min(max_blocks, threads // (32 * warps), regs // (regs_per_warp * warps))
    if result.shared_bytes:
        blocks = min(blocks, smem // (result.shared_bytes + 1024))  # 1 KiB reserved
    return blocks, blocks * warps / (threads // 32)


def table(results: List[Result]) -> str:
    """The README table: every feature on, the launcher's BLOCK_D, per kernel and dtype."""
    rows = ['| kernel | dtype | arch | registers | spills (B) | shared (B) | blocks / SM | '
            'occupancy |', '|---|---|---|---|---|---|---|---|']
    for r in results:
        s = r.spec
        forward_carry = s.kernel != 'carry_kernel' or dict(s.flags) == CARRY_MODES[0]
        if r.error or s.block_d != block_sizes(s.dtype)[0] or not forward_carry or \
                not all(v for k, v in s.flags if k not in ('HAS_INIT', 'STORE_LAST',
                                                            'REVERSE')):
            continue
        blocks, occ = occupancy(r)
        rows.append(f'| {s.kernel} | {s.dtype} | sm_{s.arch} | {r.registers} | '
                    f'{r.spill_bytes} | {r.shared_bytes} | {blocks} | {occ:.1%} |')
    return '\n'.join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90])
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--table', action='store_true')
    args = parser.parse_args()
    todo = specs(args.arch)
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(compile_one, todo))
    bad = [r for r in results if r.error or r.spill_bytes]
    for r in bad:
        print(f'FAIL {r.spec.label()}: ' + (r.error or f'{r.spill_bytes} bytes of spills '
                                             f'({r.registers} registers)'))
    worst = max((r for r in results if not r.error), key=lambda r: r.registers, default=None)
    print(f'compiled {len(results) - sum(bool(r.error) for r in results)} of {len(results)} '
          f'kernel specialisations for {", ".join(f"sm_{a}" for a in args.arch)}; '
          f'{sum(bool(r.spill_bytes) for r in results)} spill; most registers: '
          + (f'{worst.registers} ({worst.spec.label()})' if worst else '-'))
    if args.table:
        print(table(results))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
