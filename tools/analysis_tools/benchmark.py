"""Inference speed and memory of a config's model: images/s, latency, peak memory.

    python tools/analysis_tools/benchmark.py CONFIG [--shape 512 512] [--batch-size N]
        [--warmup 2] [--iters 10] [--device cpu|cuda] [--train]

Runs the model on random images (the whole network for classifiers and segmentors, the
backbone + neck for detectors). ``--train`` times a forward + backward of the same graph
(sum of the outputs as the loss) instead of inference. The batch defaults to 1 for
inference and 2 for ``--train``: BatchNorm in training mode needs more than one value per
channel, which a pooled feature (UperNet's pyramid pooling) of a single image does not
have. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident memory above
its level before the first run on CPU.
"""
import argparse
import time

import torch
from mmengine.config import DictAction

from mmshufflemamba.utils import (PeakResidentMemory, TensorForward, build_model_from_config,
                                  outputs_sum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int,
                        help='images per step (default: 1, or 2 with --train)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--train', action='store_true', help='time forward + backward')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 2 if args.train else 1
    if args.batch_size < 1:
        raise SystemExit(f'--batch-size must be at least 1; got {args.batch_size}.')

    model, _ = build_model_from_config(args.config, args.cfg_options)
    runner = TensorForward(model).to(args.device)
    runner.train(args.train)
    images = torch.randn(args.batch_size, 3, *args.shape, device=args.device)
    cuda = args.device.startswith('cuda')

    def train_forward():
        try:
            return runner(images)
        except ValueError as err:
            if 'Expected more than 1 value per channel' not in str(err):
                raise
            raise SystemExit(
                f'--train with batch {args.batch_size}: the model has BatchNorm layers '
                f'that see one value per channel in training mode (e.g. the pooled '
                f'branch of a pyramid-pooling head), which torch refuses ({err}). Use '
                f'--batch-size 2 or more.') from None

    def step():
        if args.train:
            outputs_sum(train_forward()).backward()
            runner.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                runner(images)
        if cuda:
            torch.cuda.synchronize()

    memory = PeakResidentMemory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = memory.extra_mib()
    times.sort()
    median = times[len(times) // 2]
    mode = 'train step' if args.train else 'inference'
    print(f'{args.config}: {mode}, {runner.covers}, batch {args.batch_size}, '
          f'{args.shape[0]}x{args.shape[1]}, {args.device} ({torch.get_num_threads()} threads)')
    print(f'latency (median of {args.iters}): {median * 1000:.1f} ms')
    print(f'throughput: {args.batch_size / median:.2f} images/s')
    print(f'peak memory: {peak:.0f} MiB')


if __name__ == '__main__':
    main()
