"""benchmarks/bench_backbone.py's bookkeeping, without timing anything: the alternating
rounds, the medians, and which cells it skips and why."""

import pytest
from helpers import load_script


@pytest.fixture(scope='module')
def bench():
    return load_script('benchmarks/bench_backbone.py')


def test_rounds_alternate_after_one_warmup_each_and_report_medians(bench, monkeypatch):
    order, clock = [], iter(range(1000))
    monkeypatch.setattr(bench.time, 'perf_counter', lambda: next(clock))
    steps = {name: (lambda n=name: order.append(n)) for name in ('a', 'b')}
    result = bench.side_by_side(steps, repeats=3)
    assert order == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']  # warm-ups, then flipped rounds
    assert result['a']['runs'] == [1, 1, 1] and result['a']['median'] == 1


def test_a_train_cell_is_estimated_from_the_measured_step_at_its_size(bench):
    memory = {('ShuffleMamba-S', 1024): dict(peak_mib=2000.0, seconds=20.0),
              ('DeiT-S', 1024): dict(peak_mib=1400.0, seconds=30.0)}
    est = bench.Estimates(memory)
    assert est.seconds('DeiT-S', 'train', 'fp32', 8, 1024) == 240.0
    # (1 warm-up + 2 rounds) x (20 + 30) s = 150 s at batch 1: runs under 200 s, not 100 s
    assert bench.skip_reason(est, 1024, 1, 'fp32', 'train', 2, 200.0, 1e6) is None
    assert 'about 150 s' in bench.skip_reason(est, 1024, 1, 'fp32', 'train', 2, 100.0, 1e6)


def test_other_cells_scale_the_last_one_linearly_or_quadratically_in_tokens(bench):
    est = bench.Estimates({})
    assert est.seconds('DeiT-S', 'forward', 'fp32', 1, 512) is None  # nothing measured: run
    est.measured('ShuffleMamba-S', 'forward', 'fp32', 1.0, 1, 512)
    est.measured('DeiT-S', 'forward', 'fp32', 1.0, 1, 512)
    est.measured('DeiT-S', 'forward', 'bf16', 3.0, 1, 512)
    assert est.seconds('ShuffleMamba-S', 'forward', 'fp32', 2, 1024) == 8.0  # 2 x 4x tokens
    assert est.seconds('DeiT-S', 'forward', 'fp32', 1, 1024) == 16.0  # (4x tokens)^2
    assert est.seconds('DeiT-S', 'forward', 'bf16', 1, 512) == 3.0  # same dtype first


def test_a_train_cell_that_would_not_fit_in_memory_is_skipped(bench):
    est = bench.Estimates({('ShuffleMamba-S', 1024): dict(peak_mib=2048.0, seconds=1.0),
                           ('DeiT-S', 1024): dict(peak_mib=1024.0, seconds=1.0)})
    reason = bench.skip_reason(est, 2048, 8, 'fp32', 'train', 1, 1e6, 20 * 1024.0)
    assert reason.startswith('skipped: ShuffleMamba-S would need about 64 GiB to train')
    assert bench.skip_reason(est, 1024, 1, 'fp32', 'train', 1, 1e6, 20 * 1024.0) is None
