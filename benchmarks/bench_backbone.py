"""ShuffleMamba-S against mmpretrain's DeiT-S on CPU, measured side by side in one process.

    python benchmarks/bench_backbone.py [--sizes 224 512 1024 2048] [--batches 1 8]
        [--dtypes fp32 bf16] [--modes forward train] [--repeats 3] [--threads N]
        [--memory-sizes 1024 2048] [--breakdown-sizes 512 1024] [--max-cell-seconds 300]
        [--recompute]

The comparison a user of mmpretrain would make: DeiT-S is mmpretrain's
``VisionTransformer(arch='deit-small')`` (patch 16), ShuffleMamba-S is ours (``arch='small'``),
both built for the input size (``img_size``) with ``out_type='cls_token'``, from seed 0.
``--recompute`` builds ShuffleMamba-S with ``mixer_cfg=dict(recompute=True)`` (less training
memory, more work in the backward pass: in_proj's and x_proj's GEMMs, the norm and the scans'
forward again).

1. **Speed.** Both models live in this one process. Per cell (size, batch, dtype, mode):
   one warm-up run of each model, then ``--repeats`` rounds in which each runs once, the
   order flipped every round, so that both see the same machine state; each model's median
   is reported as images/s, with the ratio of the medians' times (ShuffleMamba-S / DeiT-S;
   below 1: ours is faster). ``forward``: ``eval()`` under ``no_grad``; ``train``:
   ``train()`` mode, forward + backward of the summed outputs (both models at their
   constructors' defaults: no drop path, ShuffleMamba's ``shuffle_rate`` 0). ``bf16``:
   the fp32 weights under ``torch.autocast('cpu', dtype=torch.bfloat16)``, as
   ``tools/train.py --amp`` runs on CPU; its forward rows also give how far the bf16 output
   is from the fp32 one (same weights and input). A cell that would take longer than
   ``--max-cell-seconds`` (a train step: table 2's step at that size times the batch; else
   the last cell measured, scaled linearly in the batch, and in the tokens linearly for
   ShuffleMamba and quadratically for DeiT), or whose training memory would not fit (from
   table 2, scaled the same way), is skipped and its row says why.
2. **Peak training memory** (``--memory-sizes``): one child process per (model, size), one
   fp32 batch-1 train step, its high-water RSS (``ru_maxrss``) above the RSS once model and
   input exist. Twice: with glibc's default heap, which keeps freed memory (see
   ``FIXED_MMAP``), as a user on Linux sees it; and with a fixed mmap threshold, which
   returns freed tensors at once, so that the peak is what the tensors themselves take.
   Runs first: table 1 uses the first figure to skip cells that would not fit or take too
   long.
3. **Where a train step spends its time** (``--breakdown-sizes``): torch profiler, self CPU
   time of one fp32 batch-1 train step of each model by kind of op (GEMMs, ShuffleMamba's
   scans and convolutions, DeiT's attention, everything else).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Tuple

MODELS = ('ShuffleMamba-S', 'DeiT-S')
TOKEN_EXPONENT = {'ShuffleMamba-S': 1, 'DeiT-S': 2}  # time and memory vs tokens, at most
DTYPES = ('fp32', 'bf16')
MODES = ('forward', 'train')
# glibc's heap keeps memory that was freed: once a block of up to 32 MiB is freed, blocks
# of that size come from the heap, and the heap does not shrink under blocks still in use.
# Table 2's second figure fixes the threshold, so that freed tensors go back at once.
FIXED_MMAP = {'MALLOC_MMAP_THRESHOLD_': '131072'}
RECOMPUTE = False  # --recompute, set by main (run_child passes it on to the workers)


def build(name: str, size: int):
    """The model ``name`` for ``size`` px inputs, seed 0, fp32."""
    import torch
    torch.manual_seed(0)
    if name == 'ShuffleMamba-S':
        from mmshufflemamba.models import ShuffleMamba
        return ShuffleMamba(arch='small', img_size=size, out_type='cls_token',
                            mixer_cfg=dict(recompute=RECOMPUTE))
    from mmpretrain.models import VisionTransformer
    return VisionTransformer(arch='deit-small', img_size=size, patch_size=16,
                             out_type='cls_token')


def step_fn(model, images, dtype: str, mode: str) -> Callable[[], None]:
    """One forward (``eval``, ``no_grad``) or train step (``train``, forward + backward)."""
    import torch

    from mmshufflemamba.utils import outputs_sum

    def cast():
        return (torch.autocast('cpu', dtype=torch.bfloat16) if dtype == 'bf16'
                else nullcontext())

    def forward():
        with torch.no_grad(), cast():
            model(images)

    def train():
        with cast():
            loss = outputs_sum(model(images))
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train(mode == 'train')
    return train if mode == 'train' else forward


def bf16_difference(model, images) -> Tuple[float, float]:
    """The eval forward under bf16 autocast against fp32, same weights and input:
    max |difference| and that over max |fp32 output|."""
    import torch
    model.eval()
    with torch.no_grad():
        ref = torch.cat([t.flatten() for t in model(images)])
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = torch.cat([t.float().flatten() for t in model(images)])
    diff = (out - ref).abs().max().item()
    return diff, diff / ref.abs().max().item()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(steps: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, dict]:
    """Warm-up, then ``repeats`` alternating rounds; per model the median and the runs."""
    warmup = {name: timed(fn) for name, fn in steps.items()}
    runs = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(timed(steps[name]))
    return {name: dict(median=statistics.median(runs[name]), runs=runs[name],
                       warmup=warmup[name]) for name in steps}


def load() -> str:
    return 'load average {:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())


def available_mib() -> float:
    with open('/proc/meminfo') as f:
        info = dict(line.split(':', 1) for line in f)
    return int(info['MemAvailable'].split()[0]) / 1024


def scaled(value: float, name: str, batch: int, tokens: int, ref_batch: int,
           ref_tokens: int) -> float:
    """``value`` measured at (ref_batch, ref_tokens), extrapolated as documented above."""
    return value * batch / ref_batch * (tokens / ref_tokens) ** TOKEN_EXPONENT[name]


# ------------------------------------------------------------------ 2. memory (children)
def worker_memory(name: str, size: int) -> dict:
    import torch

    from mmshufflemamba.utils import PeakResidentMemory
    model = build(name, size)
    images = torch.randn(1, 3, size, size)
    memory = PeakResidentMemory()
    seconds = timed(step_fn(model, images, 'fp32', 'train'))
    return dict(peak_mib=memory.extra_mib(), seconds=seconds)


def run_child(*args, env: Optional[Dict[str, str]] = None) -> dict:
    """A worker in a fresh process, with this process's thread count (and ``env`` added to
    its environment)."""
    import torch
    proc = subprocess.run([sys.executable, __file__, '--threads', str(torch.get_num_threads()),
                           *(['--recompute'] if RECOMPUTE else []),
                           '--worker', *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ['killed'])[-1]
        return dict(error=f'exit {proc.returncode}: {last[:80]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_table(sizes: List[int]) -> Dict[Tuple[str, int], dict]:
    print('\n## 2. Peak training memory (fp32, batch 1, one train step per child process, '
          'high-water RSS above model + input; glibc\'s default heap, and with '
          f'{" ".join(f"{k}={v}" for k, v in FIXED_MMAP.items())})\n')
    print('| px | tokens | ShuffleMamba-S MiB | DeiT-S MiB | ShuffleMamba-S / DeiT-S '
          '| fixed mmap threshold: ShuffleMamba-S MiB | DeiT-S MiB | ratio |')
    print('|---|---|---|---|---|---|---|---|')
    result = {}
    for size in sizes:
        cells = []
        for env in ({}, FIXED_MMAP):
            runs = [run_child('memory', name, size, env=env) for name in MODELS]
            if not env:  # table 1's estimates use the default allocator's
                result.update({(name, size): r for name, r in zip(MODELS, runs)})
            ours, theirs = runs
            cells += [f'{r["peak_mib"]:.0f}' if 'peak_mib' in r else f'failed ({r["error"]})'
                      for r in runs]
            cells.append(f'{ours["peak_mib"] / theirs["peak_mib"]:.2f}x'
                         if 'peak_mib' in ours and 'peak_mib' in theirs else '-')
        print(f'| {size} | {(size // 16) ** 2 + 1} | {" | ".join(cells)} |', flush=True)
    return result


# ------------------------------------------------------------------ 1. speed (this process)
class Estimates:
    """What the next cell will cost, from what was measured: a train step from table 2's
    step at that size, else time per (model, mode) from the last cell run (of the same dtype
    if there was one); training memory from table 2."""

    def __init__(self, memory: Dict[Tuple[str, int], dict]):
        self.memory = {key: r['peak_mib'] for key, r in memory.items() if 'peak_mib' in r}
        self.train_step = {key: r['seconds'] for key, r in memory.items() if 'seconds' in r}
        self.last: Dict[Tuple[str, str, str], Tuple[float, int, int]] = {}

    def measured(self, name: str, mode: str, dtype: str, seconds: float, batch: int,
                 size: int) -> None:
        self.last[(name, mode, dtype)] = self.last[(name, mode, '')] = (
            seconds, batch, (size // 16) ** 2)

    def seconds(self, name: str, mode: str, dtype: str, batch: int,
                size: int) -> Optional[float]:
        tokens = (size // 16) ** 2
        if mode == 'train' and (name, size) in self.train_step:
            return self.train_step[(name, size)] * batch
        ref = self.last.get((name, mode, dtype)) or self.last.get((name, mode, ''))
        if ref is None:
            return None
        value, ref_batch, ref_tokens = ref
        return scaled(value, name, batch, tokens, ref_batch, ref_tokens)

    def train_mib(self, name: str, batch: int, size: int) -> Optional[float]:
        known = [s for (n, s) in self.memory if n == name and s <= size]
        if not known:
            return None
        ref = max(known)
        return scaled(self.memory[(name, ref)], name, batch, (size // 16) ** 2, 1,
                      (ref // 16) ** 2)


def skip_reason(est: Estimates, size: int, batch: int, dtype: str, mode: str, repeats: int,
                max_seconds: float, limit_mib: float) -> Optional[str]:
    if mode == 'train':
        for name in MODELS:
            mib = est.train_mib(name, batch, size)
            if mib is not None and mib > limit_mib:
                return (f'skipped: {name} would need about {mib / 1024:.0f} GiB to train, '
                        f'{limit_mib / 1024:.0f} GiB available')
    step = [est.seconds(name, mode, dtype, batch, size) for name in MODELS]
    if None not in step and (1 + repeats) * sum(step) > max_seconds:
        return (f'skipped: about {(1 + repeats) * sum(step):.0f} s of runs estimated '
                f'(--max-cell-seconds {max_seconds:.0f})')
    return None


def speed_table(args, memory: Dict[Tuple[str, int], dict]) -> None:
    import torch
    print(f'\n## 1. Speed: images/s, median of {args.repeats} alternating rounds after a '
          f'warm-up (ratio: ShuffleMamba-S time / DeiT-S time; below 1: ours is faster)\n')
    print('| px | batch | dtype | mode | ShuffleMamba-S img/s | DeiT-S img/s | ratio | '
          'load | bf16 vs fp32 output: max abs diff (relative to max abs), S; DeiT |')
    print('|---|---|---|---|---|---|---|---|---|')
    est = Estimates(memory)
    limit_mib = 0.9 * available_mib()
    for size in args.sizes:
        models = {name: build(name, size) for name in MODELS}
        for batch in args.batches:
            images = torch.randn(batch, 3, size, size)
            for dtype in args.dtypes:
                for mode in args.modes:
                    row = f'| {size} | {batch} | {dtype} | {mode} |'
                    reason = skip_reason(est, size, batch, dtype, mode, args.repeats,
                                         args.max_cell_seconds, limit_mib)
                    if reason:
                        print(f'{row} {reason} | | | | |', flush=True)
                        continue
                    res = side_by_side({name: step_fn(m, images, dtype, mode)
                                        for name, m in models.items()}, args.repeats)
                    for name in MODELS:
                        est.measured(name, mode, dtype, res[name]['median'], batch, size)
                    ours, theirs = (res[name]['median'] for name in MODELS)
                    diff = ''
                    if dtype == 'bf16' and mode == 'forward':
                        diff = '; '.join(f'{d:.3g} ({r:.2%})' for d, r in (
                            bf16_difference(models[name], images) for name in MODELS))
                    print(f'{row} {batch / ours:.3g} | {batch / theirs:.3g} | '
                          f'{ours / theirs:.2f}x | {os.getloadavg()[0]:.1f} | {diff} |',
                          flush=True)
                    if args.verbose:
                        for name in MODELS:
                            print(f'<!-- {name}: warm-up {res[name]["warmup"]:.3f} s, runs '
                                  + ' '.join(f'{t:.3f}' for t in res[name]['runs']) +
                                  ' -->')
        del models


# ------------------------------------------------------------------ 3. time split (children)
KINDS = {  # profiler event -> kind; anything else is 'other'
    'aten::mm': 'GEMM', 'aten::addmm': 'GEMM', 'aten::bmm': 'GEMM', 'aten::baddbmm': 'GEMM',
    'aten::addmm_': 'GEMM', 'aten::_addmm_activation': 'GEMM',
    'mmshufflemamba::scan': 'scan fwd', 'mmshufflemamba::scan_backward': 'scan bwd',
    'mmshufflemamba::conv': 'conv', 'mmshufflemamba::conv_backward': 'conv',
    'aten::_scaled_dot_product_flash_attention_for_cpu': 'attention',
    'aten::_scaled_dot_product_flash_attention_for_cpu_backward': 'attention',
}


def worker_breakdown(name: str, size: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    model = build(name, size)
    step = step_fn(model, torch.randn(1, 3, size, size), 'fp32', 'train')
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds: Dict[str, float] = {}
    other: Dict[str, float] = {}
    for event in prof.key_averages():
        kind = KINDS.get(event.key, 'other')
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        if kind == 'other':
            other[event.key] = event.self_cpu_time_total / 1e6
    return dict(kinds=kinds, top_other=sorted(other.items(), key=lambda kv: -kv[1])[:4])


def breakdown_table(sizes: List[int]) -> None:
    print('\n## 3. One fp32 batch-1 train step, self CPU time by kind of op (torch profiler, '
          'one child process per model and size)\n')
    print('| px | model | total s | GEMM | scan fwd | scan bwd | conv | attention | other | '
          'largest other |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for size in sizes:
        for name in MODELS:
            r = run_child('breakdown', name, size)
            if 'error' in r:
                print(f'| {size} | {name} | failed ({r["error"]}) | | | | | | | |')
                continue
            total = sum(r['kinds'].values())
            shares = [f'{100 * r["kinds"].get(k, 0.0) / total:.0f}%'
                      for k in ('GEMM', 'scan fwd', 'scan bwd', 'conv', 'attention', 'other')]
            top = ', '.join(f'{k} {100 * t / total:.0f}%' for k, t in r['top_other'])
            print(f'| {size} | {name} | {total:.3f} | ' + ' | '.join(shares) + f' | {top} |',
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512, 1024, 2048])
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--dtypes', nargs='+', choices=DTYPES, default=list(DTYPES))
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--repeats', type=int, default=3,
                        help='alternating rounds after the warm-up (median reported)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: torch\'s own choice)')
    parser.add_argument('--max-cell-seconds', type=float, default=300.0)
    parser.add_argument('--memory-sizes', type=int, nargs='*', default=[1024, 2048])
    parser.add_argument('--breakdown-sizes', type=int, nargs='*', default=[224, 512, 1024])
    parser.add_argument('--verbose', action='store_true',
                        help='also print every run of every cell (as HTML comments)')
    parser.add_argument('--recompute', action='store_true',
                        help='ShuffleMamba-S with mixer_cfg=dict(recompute=True)')
    parser.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global RECOMPUTE
    RECOMPUTE = args.recompute
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        kind, name, size = args.worker
        worker = worker_memory if kind == 'memory' else worker_breakdown
        print(json.dumps(worker(name, int(size))))
        return

    from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel
    scan = 'compiled' if load_cpu_kernel() is not None else 'PyTorch (the kernel did not build)'
    print(f'# bench_backbone.py {" ".join(sys.argv[1:])}\n\n{time.strftime("%Y-%m-%d %H:%M")}'
          f' UTC, torch {torch.__version__}, {torch.get_num_threads()} thread(s), '
          f'{os.cpu_count()} CPUs, {load()} at the start; selective scan: {scan}')
    memory = memory_table(args.memory_sizes) if args.memory_sizes else {}
    speed_table(args, memory)
    if args.breakdown_sizes:
        breakdown_table(args.breakdown_sizes)
    print(f'\n{load()} at the end')


if __name__ == '__main__':
    main()
