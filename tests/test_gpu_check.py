"""benchmarks/gpu_check.py, the one-run GPU check: its command line end to end on CPU
(``--smoke``: tiny sizes, Triton's interpreter), and how it reports a part that fails."""
import io

import pytest
from helpers import load_script, run_tool

pytest.importorskip('triton')


def gpu_check():
    return load_script('benchmarks/gpu_check.py')


def table_rows(text: str):
    """The markdown table's rows as lists of cells (header and rule line dropped)."""
    lines = [line for line in text.splitlines() if line.startswith('|')]
    assert lines[0] == '| check | case | path | result | limit | ok |'
    assert lines[1] == '|---|---|---|---|---|---|'
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]


def test_smoke_run_writes_one_table_of_every_part(tmp_path):
    out_file = tmp_path / 'gpu_check.md'
    proc = run_tool('benchmarks/gpu_check.py', '--smoke', '--out', str(out_file), timeout=600)
    assert out_file.read_text() == ''.join(
        line + '\n' for line in proc.stdout.splitlines() if line.startswith('|'))
    rows = table_rows(proc.stdout)
    assert all(len(row) == 6 for row in rows), rows
    assert not [row for row in rows if row[5] == 'FAIL'], rows
    by_check = {}
    for check, case, path, result, limit, ok in rows:
        by_check.setdefault(check, []).append((case, path, result, limit, ok))
    assert list(by_check) == ['machine', 'scan agreement', 'backbone agreement', 'scan time',
                              'scan bandwidth', 'throughput']
    agreement = {case.split()[0]: (float(result.split()[0]), ok)
                 for case, path, result, limit, ok in by_check['scan agreement']}
    assert set(agreement) == {'fp32', 'bf16'} and all(ok == 'ok' for _, ok in agreement.values())
    assert agreement['fp32'][0] < 1e-5  # float32: only the order of the additions differs
    fp32, bf16 = by_check['backbone agreement']
    assert fp32[1] == 'triton vs torch' and fp32[4] == 'ok' and float(fp32[2].split()[0]) < 1e-4
    assert 'finite: True' in bf16[2] and bf16[4] == 'ok'
    timed = {path for case, path, result, limit, ok in by_check['scan time'] if 'ms' in result}
    assert timed == {'triton', 'torch'}  # mamba_ssm does not import on CPU: its row says so
    assert [path for _, path, *_ in by_check['scan bandwidth']] == ['triton']
    throughput = [(case, path) for case, path, result, *_ in by_check['throughput']
                  if 'img/s' in result]
    assert len(throughput) == 4 and {path for _, path in throughput} == {
        'triton scan', 'plain ViT (SDPA)'}
    assert {case.rsplit(', ', 1)[1] for case, _ in throughput} == {'forward', 'train step'}


def test_a_part_that_raises_is_a_failed_row_and_the_run_goes_on():
    check = gpu_check()
    out = io.StringIO()
    table = check.Table([out])

    def broken():
        table.row('scan time', 'L 40', 'triton', 'fwd 1 ms')
        raise RuntimeError('no kernel image | for sm_90')

    table.part('scan time', broken)
    table.row('throughput', 'x', 'y', '1 img/s')
    rows = table_rows(out.getvalue())
    assert rows[1] == ['scan time', 'raised', '-',
                       'RuntimeError: no kernel image / for sm_90', '', 'FAIL']
    assert table.failed and rows[2][0] == 'throughput'
