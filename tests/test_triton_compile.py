"""The Triton scan's kernels compile for sm_80 and sm_90 on this CPU-only machine, with no
register spills (benchmarks/triton_compile_check.py: triton.compile to cubin for a
GPUTarget, ptxas -v on the PTX; nothing is launched)."""
import re

import pytest
from helpers import load_script, run_tool

pytest.importorskip('triton')


def compile_check():
    return load_script('benchmarks/triton_compile_check.py')


def test_the_check_sees_spills_and_registers():
    """float64 tiles of 4 channels spill in the backward kernel on sm_90 (why the launcher
    uses 2 in float64); the check reports it, and 2 channels compile clean."""
    check = compile_check()
    features = tuple((f, True) for f in check.KERNEL_FEATURES['chunk_scan_backward_kernel'])
    spilling = check.compile_one(check.Spec('chunk_scan_backward_kernel', 90, 'fp64', 4,
                                            features))
    assert not spilling.error and spilling.spill_bytes > 0, spilling
    assert check.block_sizes('fp64') == [2, 1] and check.block_sizes('fp32') == [4, 2, 1]
    clean = check.compile_one(check.Spec('chunk_scan_backward_kernel', 90, 'fp64', 2,
                                         features))
    assert not clean.error and clean.spill_bytes == 0 and 0 < clean.registers <= 255, clean
    blocks, occupancy = check.occupancy(clean)
    assert blocks >= 1 and 0 < occupancy <= 1


def test_compiling_leaves_the_interpreter_switch_to_the_environment(monkeypatch):
    """The check decorates its kernels with the interpreter off, then leaves Triton's knob
    as it found it: still read from TRITON_INTERPRET (a knob once assigned ignores it,
    which broke later interpreter runs in the same process)."""
    import triton
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    compile_check().compiled_kernels()
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert triton.knobs.runtime.interpret
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert not triton.knobs.runtime.interpret


@pytest.mark.slow
def test_every_scan_kernel_compiles_for_sm80_and_sm90_without_spills():
    expected = len(compile_check().specs([80, 90]))
    proc = run_tool('benchmarks/triton_compile_check.py', '--arch', '80', '90', check=False,
                    timeout=1800)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    summary = re.search(r'compiled (\d+) of (\d+) kernel specialisations for sm_80, sm_90; '
                        r'(\d+) spill', proc.stdout)
    assert summary, proc.stdout
    assert int(summary.group(1)) == int(summary.group(2)) == expected, summary.group(0)
    assert summary.group(3) == '0', summary.group(0)
