"""Selective scan on CPU: the compiled kernel, the PyTorch scan and the textbook reference.

Forward + backward time and peak extra memory at Vim-S sizes (batch 2, d_inner 768,
d_state 16, variable B/C, z, D, delta_bias, softplus), measured side by side in one run.
Every (implementation, L) pair runs in its own subprocess, so peak memory is that
process's high-water RSS above its RSS once the inputs exist. The reference's backward is
quadratic in L (75 s at L = 1024 on 2 cores), so it runs only up to --reference-max-length.

    python benchmarks/bench_scan.py [--lengths 197 1024 4096] [--repeats 3]
"""
import argparse
import json
import subprocess
import sys
import time

IMPLS = {
    'compiled': 'mmshufflemamba.ops.selective_scan_cpu',
    'torch': 'mmshufflemamba.ops.selective_scan_torch',
    'reference': 'mmshufflemamba.ops.selective_scan_reference',
}


def worker(impl: str, length: int, repeats: int, batch: int, channels: int,
           state: int) -> dict:
    import importlib

    import torch
    module, name = IMPLS[impl].rsplit('.', 1)
    fn = getattr(importlib.import_module(module), name)
    if impl == 'compiled':
        from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel
        if load_cpu_kernel() is None:
            raise SystemExit('the compiled scan is not built: python -m mmshufflemamba.ops.build')
    g = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    inputs = dict(u=leaf(batch, channels, length), delta=leaf(batch, channels, length, scale=0.5),
                  A=(-torch.exp(leaf(channels, state, scale=0.3))).detach().requires_grad_(),
                  B=leaf(batch, state, length), C=leaf(batch, state, length),
                  D=leaf(channels), z=leaf(batch, channels, length),
                  delta_bias=leaf(channels, scale=0.1))
    from mmshufflemamba.utils import PeakResidentMemory
    memory = PeakResidentMemory()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(**inputs, delta_softplus=True)
        out.sum().backward()
        times.append(time.perf_counter() - start)
        for tensor in inputs.values():
            tensor.grad = None
        del out
    return dict(impl=impl, length=length, seconds=min(times),
                peak_mib=memory.extra_mib(), threads=torch.get_num_threads())


def run_worker(impl: str, length: int, repeats: int, args) -> dict:
    cmd = [sys.executable, __file__, '--worker', impl, '--lengths', str(length), '--repeats',
           str(repeats), '--batch', str(args.batch), '--channels', str(args.channels),
           '--state', str(args.state)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f'{impl} at L={length} failed:\n{proc.stderr}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lengths', type=int, nargs='+', default=[197, 1024, 4096])
    parser.add_argument('--reference-max-length', type=int, default=1024,
                        help='longest L the (quadratic) textbook reference runs at')
    parser.add_argument('--repeats', type=int, default=3,
                        help='runs of the fast paths (best is kept); the reference runs once')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', type=int, default=768, help='d_inner')
    parser.add_argument('--state', type=int, default=16, help='d_state')
    parser.add_argument('--worker', choices=sorted(IMPLS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.lengths[0], args.repeats, args.batch,
                                args.channels, args.state)))
        return

    print(f'selective scan fwd+bwd, batch {args.batch}, d_inner {args.channels}, '
          f'd_state {args.state}, float32, CPU')
    header = (f'{"L":>5} | {"compiled s":>10} | {"torch s":>8} | {"reference s":>11} | '
              f'{"vs torch":>8} | {"vs reference":>12} | '
              f'{"peak MiB compiled / torch / reference":>37}')
    print(header)
    print('-' * len(header))
    for length in args.lengths:
        fast = run_worker('compiled', length, args.repeats, args)
        torch_ = run_worker('torch', length, args.repeats, args)
        ref = (run_worker('reference', length, 1, args)
               if length <= args.reference_max_length else None)
        ref_s = f'{ref["seconds"]:>11.2f}' if ref else f'{"not run":>11}'
        vs_ref = f'{ref["seconds"] / fast["seconds"]:>11.0f}x' if ref else f'{"-":>12}'
        ref_mib = f'{ref["peak_mib"]:.0f}' if ref else '-'
        mem = f'{fast["peak_mib"]:.0f} / {torch_["peak_mib"]:.0f} / {ref_mib}'
        print(f'{length:>5} | {fast["seconds"]:>10.4f} | {torch_["seconds"]:>8.3f} | {ref_s} | '
              f'{torch_["seconds"] / fast["seconds"]:>7.1f}x | {vs_ref} | {mem:>37}',
              flush=True)
    print(f'(threads: {fast["threads"]}; "vs" = time of the other path / compiled time; '
          f'reference not run above L = {args.reference_max_length})')

if __name__ == '__main__':
    main()
