"""Backbone speed on CPU: ShuffleMamba-T/S against mmpretrain's DeiT-T/S, side by side.

    python benchmarks/bench_backbone.py [--sizes 224 256 512 1024 2048] [--repeats 2]
                                        [--compiled-sizes 224 1024] [--breakdown-size 1024]

Four tables, every number measured in this run:

1. Forward (inference, ``no_grad``) and train-step (forward + backward of the summed
   outputs, ``train()`` mode) seconds per image at each input size, batch 1, and the
   ratio ShuffleMamba / DeiT, eager; at ``--compiled-sizes`` also the forward of
   ``torch.compile(model)`` (after its warm-up compilation). Each (model, size) runs in
   its own subprocess; a run that does not fit in memory is reported as such.
2. Scaling: train-step time when the token count grows 4x (256 -> 512 px) and 16x
   (256 -> 1024 px). Linear scaling means a ratio of about 4 and 16.
3. Shuffle overhead: ShuffleMamba-S train steps with shuffle_rate 0.5 and 0.0 in one
   process, alternating (median of --shuffle-repeats each); and the peak memory of a
   train step with and without activation checkpointing (``with_cp``), each in its own
   process (high-water RSS above the RSS once model and input exist).
4. Where one ShuffleMamba-S forward at ``--breakdown-size`` spends its time (torch
   profiler, self CPU time): the scans, the GEMMs, the fused convolutions and everything
   else, so that the next bottleneck is visible.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

from mmshufflemamba.utils import PeakResidentMemory, outputs_sum

MODELS = {  # name -> (builder, arch)
    'ShuffleMamba-T': ('shufflemamba', 'tiny'),
    'ShuffleMamba-S': ('shufflemamba', 'small'),
    'DeiT-T': ('deit', 'deit-tiny'),
    'DeiT-S': ('deit', 'deit-small'),
}


def build(name: str, size: int, **kwargs):
    kind, arch = MODELS[name]
    if kind == 'shufflemamba':
        from mmshufflemamba.models import ShuffleMamba
        return ShuffleMamba(arch=arch, img_size=size, out_type='cls_token', **kwargs)
    from mmpretrain.models import VisionTransformer
    return VisionTransformer(arch=arch, img_size=size, patch_size=16, out_type='cls_token',
                             **kwargs)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def worker_speed(name: str, size: int, repeats: int, compiled: bool) -> dict:
    import torch
    torch.manual_seed(0)
    model = build(name, size)
    images = torch.randn(1, 3, size, size)
    run = torch.compile(model) if compiled else model

    def forward():
        model.eval()
        with torch.no_grad():
            run(images)

    def train_step():
        model.train()
        outputs_sum(model(images)).backward()
        model.zero_grad(set_to_none=True)

    result = dict(forward=timed(forward, repeats), threads=torch.get_num_threads())
    if not compiled:
        result['train'] = timed(train_step, repeats)
    return result


GEMMS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::matmul', 'aten::linear',
         'aten::_addmm_activation')


def worker_breakdown(size: int) -> dict:
    """Self CPU time of one ShuffleMamba-S forward, by kind of op."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    model = build('ShuffleMamba-S', size).eval()
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        model(images)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(images)
    kinds = dict(scan=0.0, gemm=0.0, conv=0.0, other=0.0)
    top_other = {}
    for event in prof.key_averages():
        t = event.self_cpu_time_total / 1e6
        if event.key == 'mmshufflemamba::scan':
            kinds['scan'] += t
        elif event.key == 'mmshufflemamba::conv':
            kinds['conv'] += t
        elif event.key in GEMMS:
            kinds['gemm'] += t
        else:
            kinds['other'] += t
            top_other[event.key] = t
    kinds['top_other'] = sorted(top_other.items(), key=lambda kv: -kv[1])[:5]
    return kinds


def worker_memory(name: str, size: int, with_cp: bool) -> dict:
    import torch
    torch.manual_seed(0)
    model = build(name, size, with_cp=with_cp).train()
    images = torch.randn(1, 3, size, size)
    memory = PeakResidentMemory()
    outputs_sum(model(images)).backward()
    return dict(peak_mib=memory.extra_mib())


def worker_shuffle(size: int, repeats: int) -> dict:
    import torch
    from mmshufflemamba.models.layers import LayerwiseShuffle
    torch.manual_seed(0)
    model = build('ShuffleMamba-S', size).train()
    images = torch.randn(1, 3, size, size)
    shuffles = {rate: LayerwiseShuffle(model.num_layers, rate) for rate in (0.5, 0.0)}
    times = {rate: [] for rate in shuffles}

    def step():
        outputs_sum(model(images)).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    for _ in range(repeats):
        for rate, shuffle in shuffles.items():
            model.shuffle = shuffle
            start = time.perf_counter()
            step()
            times[rate].append(time.perf_counter() - start)
    return {str(rate): statistics.median(t) for rate, t in times.items()}


def run(args: list, may_fail: bool = False) -> dict:
    proc = subprocess.run([sys.executable, __file__, '--worker', *map(str, args)],
                          capture_output=True, text=True)
    if proc.returncode:
        if may_fail:  # typically out of memory (DeiT's attention at 2048 px)
            last = (proc.stderr.strip().splitlines() or ['killed'])[-1]
            return dict(error=f'failed (exit {proc.returncode}: {last[:60]})')
        raise SystemExit(f'worker {args} failed:\n{proc.stderr}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seconds(result: dict, key: str) -> str:
    return f'{result[key]:.3f}' if key in result else 'n/a'


def ratio(ours: dict, theirs: dict, key: str) -> str:
    if key not in ours or key not in theirs:
        return '-'
    return f'{ours[key] / theirs[key]:.2f}x'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 256, 512, 1024, 2048])
    parser.add_argument('--compiled-sizes', type=int, nargs='*', default=[224, 1024],
                        help='sizes that also get a torch.compile column')
    parser.add_argument('--breakdown-size', type=int, default=1024)
    parser.add_argument('--repeats', type=int, default=2, help='timed runs (best is kept)')
    parser.add_argument('--shuffle-size', type=int, default=224)
    parser.add_argument('--shuffle-repeats', type=int, default=15)
    parser.add_argument('--memory-size', type=int, default=512)
    parser.add_argument('--worker', nargs='+', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == 'speed':
            result = worker_speed(rest[0], int(rest[1]), int(rest[2]), rest[3] == 'True')
        elif kind == 'breakdown':
            result = worker_breakdown(int(rest[0]))
        elif kind == 'memory':
            result = worker_memory(rest[0], int(rest[1]), rest[2] == 'True')
        else:
            result = worker_shuffle(int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return

    from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel
    scan = 'compiled' if load_cpu_kernel() is not None else 'PyTorch (not compiled)'
    speed = {(name, size): run(['speed', name, size, args.repeats, False], may_fail=True)
             for size in args.sizes for name in MODELS}
    compiled = {(name, size): run(['speed', name, size, args.repeats, True], may_fail=True)
                for size in args.compiled_sizes for name in MODELS}
    threads = next(r['threads'] for r in speed.values() if 'threads' in r)
    print(f'CPU, {threads} threads, batch 1, float32, selective scan: {scan}\n')
    print('1. seconds per image (ratio = ShuffleMamba / DeiT at the same size; compiled: '
          'torch.compile(model), forward only)')
    print('| size | tokens | model | forward | train step | compiled forward | fwd ratio | '
          'train ratio | compiled fwd ratio |')
    print('|---|---|---|---|---|---|---|---|---|')
    for size in args.sizes:
        for ours, deit in (('ShuffleMamba-T', 'DeiT-T'), ('ShuffleMamba-S', 'DeiT-S')):
            for name in (ours, deit):
                r, c = speed[(name, size)], compiled.get((name, size), {})
                cols = [seconds(r, 'forward'), seconds(r, 'train'), seconds(c, 'forward')]
                if name == ours:
                    d, dc = speed[(deit, size)], compiled.get((deit, size), {})
                    cols += [ratio(r, d, 'forward'), ratio(r, d, 'train'),
                             ratio(c, dc, 'forward')]
                else:
                    cols += ['', '', '']
                note = f' ({r["error"]})' if 'error' in r else ''
                print(f'| {size} | {(size // 16) ** 2} | {name}{note} | ' + ' | '.join(cols) +
                      ' |', flush=True)

    if {256, 512, 1024} <= set(args.sizes):
        print('\n2. train-step time as tokens grow (linear: 4x tokens -> about 4x time)')
        header = f'{"model":>14} | {"4x tokens (256->512)":>20} | {"16x tokens (256->1024)":>22}'
        print(header)
        print('-' * len(header))
        for name in MODELS:
            if any('train' not in speed[(name, s)] for s in (256, 512, 1024)):
                continue
            base = speed[(name, 256)]['train']
            print(f'{name:>14} | {speed[(name, 512)]["train"] / base:>19.2f}x | '
                  f'{speed[(name, 1024)]["train"] / base:>21.2f}x')

    shuffle = run(['shuffle', args.shuffle_size, args.shuffle_repeats])
    overhead = shuffle['0.5'] / shuffle['0.0'] - 1
    print(f'\n3. ShuffleMamba-S train step at {args.shuffle_size} px, median of '
          f'{args.shuffle_repeats} alternating runs: shuffle_rate 0.5 {shuffle["0.5"]:.3f} s, '
          f'0.0 {shuffle["0.0"]:.3f} s, overhead {overhead * 100:+.1f}%')
    plain = run(['memory', 'ShuffleMamba-S', args.memory_size, False])
    cp = run(['memory', 'ShuffleMamba-S', args.memory_size, True])
    print(f'   peak memory of one ShuffleMamba-S train step at {args.memory_size} px: '
          f'{plain["peak_mib"]:.0f} MiB without with_cp, {cp["peak_mib"]:.0f} MiB with '
          f'with_cp ({cp["peak_mib"] / plain["peak_mib"]:.2f}x)')

    parts = run(['breakdown', args.breakdown_size])
    total = sum(v for k, v in parts.items() if k != 'top_other')
    print(f'\n4. one ShuffleMamba-S forward at {args.breakdown_size} px, self CPU time by '
          f'kind of op (torch profiler; total {total:.3f} s)')
    for kind, label in (('gemm', 'GEMMs (aten::mm/addmm/...)'),
                        ('scan', 'selective scans (fused kernel, both directions)'),
                        ('conv', 'causal convolutions + SiLU (fused kernel)'),
                        ('other', 'everything else')):
        print(f'   {label:<48} {parts[kind]:7.3f} s  {100 * parts[kind] / total:5.1f}%')
    print('   largest of "everything else": ' +
          ', '.join(f'{name} {100 * t / total:.1f}%' for name, t in parts['top_other']))


if __name__ == '__main__':
    main()
