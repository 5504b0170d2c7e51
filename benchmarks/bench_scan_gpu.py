"""Selective scan on a CUDA GPU: the Triton kernel against the PyTorch scan (and mamba_ssm's
CUDA kernel where it imports), and against the GPU's memory roofline.

At ShuffleMamba-S sizes (d_inner 768, d_state 16, variable B/C, z, D, delta_bias,
softplus; batch 2; L = 197 and 1025, the 224 px and 512 px sequences) it prints, measured
side by side in one run:

* agreement of values and of every gradient with the PyTorch scan (max |difference| over
  max |value|);
* forward and forward + backward times (CUDA events, median of ``--repeats``);
* the roofline: the bytes a scan must move at least (every input read once, every output
  written once; forward: u, delta, z, B, C, A, D, delta_bias in, y out; backward adds
  grad_y in and every gradient out), divided by the bandwidth of a large device-to-device
  copy measured in the same run, as a fraction of the measured time.

    python benchmarks/bench_scan_gpu.py [--lengths 197 1025] [--repeats 20]
    python benchmarks/bench_scan_gpu.py --smoke   # tiny sizes on CPU under TRITON_INTERPRET=1

The GPU machine needs only torch and Triton for this script (no mmengine).
"""
import argparse
import os
import statistics
import sys
import time

if '--smoke' in sys.argv:  # before Triton is imported anywhere
    os.environ['TRITON_INTERPRET'] = '1'

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_inputs(batch, channels, state, length, device, dtype=torch.float32, seed=0):
    g = torch.Generator(device='cpu').manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()

    A = (-torch.exp(torch.randn(channels, state, generator=g) * 0.3)).to(device)
    return dict(u=leaf(batch, channels, length), delta=leaf(batch, channels, length, scale=0.5),
                A=A.requires_grad_(), B=leaf(batch, state, length),
                C=leaf(batch, state, length), D=leaf(channels).float(),
                z=leaf(batch, channels, length), delta_bias=leaf(channels, scale=0.1).float())


def essential_bytes(inputs, backward: bool) -> int:
    read = sum(t.numel() * t.element_size() for t in inputs.values())
    y = inputs['u'].numel() * inputs['u'].element_size()
    total = read + y  # inputs in, y out
    if backward:
        total += y + read  # grad_y in, one gradient per input out
    return total


def copy_bandwidth(device) -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = timed(lambda: dst.copy_(src), 10, device)
    return 2 * src.numel() * 4 / seconds


def timed(fn, repeats, device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_scan(fn, inputs, backward):
    for t in inputs.values():
        t.grad = None
    out = fn(**inputs, delta_softplus=True)
    if backward:
        out.float().square().sum().backward()
    return out


def agreement(fn, ref_fn, inputs) -> str:
    out = run_scan(fn, inputs, True).detach().float()
    grads = {k: v.grad.clone() for k, v in inputs.items()}
    ref = run_scan(ref_fn, inputs, True).detach().float()
    worst = ((out - ref).abs().max() / ref.abs().max()).item()
    for k, v in inputs.items():
        worst = max(worst, ((grads[k] - v.grad).abs().max() / v.grad.abs().max()).item())
    return f'{worst:.1e}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lengths', type=int, nargs='+', default=[197, 1025])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', type=int, default=768)
    parser.add_argument('--state', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--smoke', action='store_true',
                        help='tiny sizes on CPU under the Triton interpreter (checks the '
                             'script, measures nothing meaningful)')
    args = parser.parse_args()
    from mmshufflemamba.ops import mamba_ssm_scan
    from mmshufflemamba.ops.scan_contract import ScanCall
    from mmshufflemamba.ops.torch_scan import selective_scan_torch
    from mmshufflemamba.ops.triton_scan import selective_scan_triton, triton_available
    if args.smoke:
        device = torch.device('cpu')
        args.lengths, args.batch, args.channels, args.state, args.repeats = [9], 1, 8, 4, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit('no CUDA device: this benchmark needs a GPU (or --smoke)')
        device = torch.device('cuda')
    if not triton_available():
        raise SystemExit('Triton >= 3.4 is not available')
    paths = {'triton': selective_scan_triton, 'torch': selective_scan_torch}
    if device.type == 'cuda' and mamba_ssm_scan.load_mamba_ssm_scan() is not None:
        unusable = mamba_ssm_scan.why_not(ScanCall('cuda', torch.float32))  # its check
        if unusable:
            print(f'mamba_ssm left out: {unusable}')
        else:
            paths['mamba_ssm'] = mamba_ssm_scan.load_mamba_ssm_scan()
    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU (interpreter)'
    bandwidth = copy_bandwidth(device) if device.type == 'cuda' else float('nan')
    print(f'{name}; copy bandwidth {bandwidth / 1e9:.0f} GB/s; batch {args.batch}, d_inner '
          f'{args.channels}, d_state {args.state}, float32')
    print('| L | path | max rel. diff vs torch (values, grads) | fwd ms | fwd+bwd ms | '
          'roofline fwd / fwd+bwd |')
    print('|---|---|---|---|---|---|')
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.channels, args.state, length, device)
        for label, fn in paths.items():
            diff = agreement(fn, selective_scan_torch, inputs) if label != 'torch' else '-'
            fwd = timed(lambda: run_scan(fn, inputs, False), args.repeats, device)
            both = timed(lambda: run_scan(fn, inputs, True), args.repeats, device)
            roof = (f'{essential_bytes(inputs, False) / bandwidth / fwd:.0%} / '
                    f'{essential_bytes(inputs, True) / bandwidth / both:.0%}')
            print(f'| {length} | {label} | {diff} | {fwd * 1e3:.3f} | {both * 1e3:.3f} | '
                  f'{roof} |', flush=True)


if __name__ == '__main__':
    main()
