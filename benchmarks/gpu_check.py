"""The GPU check: everything to verify and measure on a CUDA machine, in one run of minutes.

    python3 benchmarks/gpu_check.py [--out FILE] [--repeats 10]
    python3 benchmarks/gpu_check.py --smoke   # same code, tiny sizes, CPU, TRITON_INTERPRET=1

One markdown table (stdout, and ``--out FILE``), row by row as the results come, measured
side by side in this one run:

* ``machine``: the device, torch and Triton versions, the bandwidth of a 1 GiB
  device-to-device copy (bytes read + written) and the card's nominal peak where known;
* ``scan agreement``: the Triton scan against the PyTorch scan at ShuffleMamba-S sizes
  (d_inner 768, d_state 16, variable B/C, z, D, delta_bias, softplus), float32 and bfloat16
  inputs: max |difference| / max |reference| over the output and every gradient, within
  :data:`SCAN_LIMITS`;
* ``backbone agreement``: ShuffleMamba-S (train mode, shuffle_rate 0.5) on the GPU, forward
  and backward in float32 with the Triton scan against the same model with the PyTorch
  scan (same seed, so the same shuffles): output and every parameter gradient within
  :data:`BACKBONE_LIMIT`; then a bf16-autocast training step with the Triton scan, whose
  output and gradients must be finite (their distance from float32 is reported);
* ``scan time``: forward and forward + backward of the Triton scan, the PyTorch scan and
  mamba_ssm's kernel (where the dispatcher would run it) at L = 1k..16k,
  batch 2, bfloat16 inputs (what the mixers pass under bf16 autocast; ``--scan-dtype``);
* ``scan bandwidth``: the bytes a scan must move at least (every input read once, every
  output written once; backward adds grad_y in and one gradient per input out) over the
  Triton scan's time, against the measured copy bandwidth and the nominal peak;
* ``throughput``: ShuffleMamba-S (Triton scan) and a DeiT-S of the same width (384, depth
  12, 6 heads; timm's ``deit_small_patch16_224`` where timm imports, else the plain ViT
  below on torch's ``scaled_dot_product_attention``; the row says which) at 224, 512 and
  1024 px under bf16 autocast: forward (``eval``, ``no_grad``) and training-step (forward,
  backward, AdamW step) images/s and the peak of allocated GPU memory.

Exit status 1 if an agreement check fails or a part raises (the part's row says what), 2
without CUDA (and without --smoke) or without Triton >= 3.4.

Installing on a bare GPU machine (Python 3.12, torch and Triton, no network): importing
``mmshufflemamba`` needs mmengine (the registries, the optimiser wrapper), and mmengine
needs addict, termcolor, yapf and platformdirs beside what such a machine has (numpy,
pyyaml, rich, opencv); mmcv, mmpretrain, mmseg and mmdet are not needed. All five are pure
Python, 0.8 MB together. Here, with network, in the repository root (``.whl/`` is
git-ignored)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl \\
        mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9

There, offline, from the repository root (the package itself is not installed: this script
puts the repository on ``sys.path``)::

    python3 -m pip install -q --no-index --no-deps --find-links .whl --target /tmp/site \\
        mmengine addict termcolor yapf platformdirs
    PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out gpu_check.md
"""
import argparse
import contextlib
import math
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, NamedTuple, Optional, TextIO, Tuple

if '--smoke' in sys.argv:  # before Triton is imported anywhere
    os.environ['TRITON_INTERPRET'] = '1'

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmshufflemamba.models import ShuffleMamba  # noqa: E402
from mmshufflemamba.models.layers import use_scan_backend  # noqa: E402
from mmshufflemamba.ops import BACKENDS, triton_available  # noqa: E402
from mmshufflemamba.ops.scan_contract import ScanCall  # noqa: E402
from mmshufflemamba.utils import outputs_sum  # noqa: E402

# max |difference| / max |reference| of the Triton scan against the PyTorch scan, output and
# every gradient, per input dtype. Both compute in float32; float32 differs only in the order
# of the additions (parallel scan vs sequential). bf16 outputs and gradients are rounded to
# bf16 once in each path: at most 2**-8 = 3.9e-3 of a value when rounded to nearest (GPUs),
# 2**-7 when truncated (Triton's interpreter), so two roundings stay below 1.6e-2.
SCAN_LIMITS = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# the same for the float32 backbone (matmuls and convolutions without TF32): 24 layers of the
# scans' float32 differences, output and every parameter gradient
BACKBONE_LIMIT = 1e-3
# nominal memory bandwidth (bytes/s) by a substring of torch.cuda.get_device_name()
# (NVIDIA's data sheets; a card not named here gets no nominal column)
NOMINAL_BANDWIDTH = {'H200': 4.8e12, 'H100 80GB HBM3': 3.35e12, 'H100 PCIe': 2.0e12,
                     'A100-SXM4-80GB': 2.039e12, 'A100-SXM4-40GB': 1.555e12}
# a timed measurement stops after this many seconds (at least 3 runs): the PyTorch scan runs
# one step at a time, 16k steps a call at L = 16k
TIME_BUDGET_S = 5.0
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


class Plan(NamedTuple):
    """The sizes of one run."""
    device: torch.device
    batch: int  # scans
    channels: int  # d_inner
    state: int  # d_state
    agree_length: int
    lengths: List[int]
    names: Tuple[str, str]  # the two backbones, as the rows name them
    arch: object  # ShuffleMamba's arch (name or dict)
    mixer_cfg: Optional[dict]  # ShuffleMamba's mixer arguments (None: Vim's, d_state 16)
    vit: dict  # embed_dims, depth, heads of the DeiT
    check_size: int  # image side of the backbone agreement
    check_batch: int
    batches: Dict[int, int]  # image side -> batch of the throughput rows
    warmup: int  # untimed runs before the timed ones
    repeats: int


FULL = dict(batch=2, channels=768, state=16, agree_length=1025,
            lengths=[1024, 2048, 4096, 8192, 16384], names=('ShuffleMamba-S', 'DeiT-S'),
            arch='small', mixer_cfg=None,
            vit=dict(embed_dims=384, depth=12, heads=6), check_size=224, check_batch=2,
            batches={224: 64, 512: 16, 1024: 4}, warmup=1)
# the interpreter runs a program in numpy: a few dozen programs per launch at most
SMOKE = dict(batch=1, channels=8, state=4, agree_length=40, lengths=[40], repeats=1,
             names=('ShuffleMamba (smoke size)', 'DeiT (smoke size)'),
             arch=dict(embed_dims=4, num_layers=2), mixer_cfg=dict(d_state=4),
             vit=dict(embed_dims=16, depth=2, heads=2), check_size=32, check_batch=1,
             batches={32: 1}, warmup=0)


class Table:
    """The one markdown table: a header, then rows written (and flushed) as they come."""
    COLUMNS = ('check', 'case', 'path', 'result', 'limit', 'ok')

    def __init__(self, sinks: List[TextIO]):
        self.sinks = sinks
        self.failed = False
        self._write('| ' + ' | '.join(self.COLUMNS) + ' |')
        self._write('|' + '---|' * len(self.COLUMNS))

    def _write(self, line: str) -> None:
        for sink in self.sinks:
            print(line, file=sink, flush=True)

    def row(self, check: str, case: str, path: str, result: str, limit: str = '',
            ok: Optional[bool] = None) -> None:
        self.failed |= ok is False
        mark = '' if ok is None else ('ok' if ok else 'FAIL')
        self._write(f'| {check} | {case} | {path} | {result} | {limit} | {mark} |')

    def part(self, check: str, fn: Callable[[], None]) -> None:
        """Run one part; an exception becomes a failed row (and a traceback on stderr)."""
        try:
            fn()
        except Exception as e:  # a GPU run is scarce: report it and go on with the rest
            traceback.print_exc()
            message = ' '.join(f'{type(e).__name__}: {e}'.split())[:200].replace('|', '/')
            self.row(check, 'raised', '-', message, '', False)


# --- timing and memory ---------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], plan: Plan) -> float:
    """Median seconds of ``fn`` over ``plan.repeats`` runs (fewer, but at least 3, once
    :data:`TIME_BUDGET_S` is spent) after ``plan.warmup`` untimed ones (CUDA events on GPU)."""
    device = plan.device
    for _ in range(plan.warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    for _ in range(plan.repeats):
        if len(times) >= 3 and sum(times) > TIME_BUDGET_S:
            break
        if device.type == 'cuda':
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start_s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start_s)
    return statistics.median(times)


def peak_mib(device: torch.device) -> str:
    """Peak allocated GPU memory since the last reset, or '-' on CPU."""
    if device.type != 'cuda':
        return '-'
    return f'{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB'


def reset_peak(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def copy_bandwidth(plan: Plan) -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write counted); nan on CPU."""
    if plan.device.type != 'cuda':
        return math.nan
    src = torch.empty(1 << 28, dtype=torch.float32, device=plan.device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), plan._replace(warmup=3, repeats=10))
    return 2 * src.numel() * src.element_size() / seconds


def nominal_bandwidth(device: torch.device) -> float:
    """The named card's nominal peak bytes/s (:data:`NOMINAL_BANDWIDTH`), or nan."""
    if device.type != 'cuda':
        return math.nan
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in NOMINAL_BANDWIDTH.items() if key in name), math.nan)


def gbps(rate: float) -> str:
    return f'{rate / 1e9:.0f} GB/s' if math.isfinite(rate) else 'n/a'


def share(rate: float, reference: float) -> str:
    """``rate`` as a percentage of ``reference`` ('n/a' where the reference is unknown)."""
    return f'{rate / reference:.0%}' if math.isfinite(reference) else 'n/a'


# --- the scan ------------------------------------------------------------------------------


def scan_inputs(plan: Plan, length: int, dtype: torch.dtype, seed: int = 0) -> Dict[str, Tensor]:
    """Leaf tensors of one scan call as the mixers make them: u, delta, B ``(b, N, L)``, C, z in
    ``dtype``; A ``(D, N)``, D and delta_bias ``(D,)`` in float32."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    b, d, n = plan.batch, plan.channels, plan.state

    def leaf(*shape: int, scale: float = 1.0, dt: torch.dtype = dtype) -> Tensor:
        t = torch.randn(*shape, generator=g) * scale
        return t.to(plan.device, dt).requires_grad_()

    A = -torch.exp(torch.randn(d, n, generator=g) * 0.3)
    return dict(u=leaf(b, d, length), delta=leaf(b, d, length, scale=0.5),
                A=A.to(plan.device).requires_grad_(), B=leaf(b, n, length),
                C=leaf(b, n, length), D=leaf(d, dt=torch.float32), z=leaf(b, d, length),
                delta_bias=leaf(d, scale=0.1, dt=torch.float32))


def essential_bytes(inputs: Dict[str, Tensor], backward: bool) -> int:
    """Bytes a scan must move at least: inputs read and y written (backward: also grad_y
    read and one gradient per input written)."""
    read = sum(t.numel() * t.element_size() for t in inputs.values())
    y = inputs['u'].numel() * inputs['u'].element_size()
    return read + y + (y + read if backward else 0)


def run_scan(fn: Callable, inputs: Dict[str, Tensor], backward: bool) -> Tensor:
    for t in inputs.values():
        t.grad = None
    out = fn(**inputs, delta_softplus=True)
    if backward:
        out.float().square().sum().backward()
    return out


def relative_difference(a: Tensor, ref: Tensor) -> float:
    """max |a - ref| / max |ref| in float32 (0 when both are zero)."""
    a, ref = a.detach().float(), ref.detach().float()
    scale = ref.abs().max().item()
    diff = (a - ref).abs().max().item()
    return diff / scale if scale else diff


def scan_agreement(plan: Plan, table: Table) -> None:
    torch_scan = BACKENDS['torch'].run
    for label, dtype in DTYPES.items():
        inputs = scan_inputs(plan, plan.agree_length, dtype)
        out = run_scan(BACKENDS['triton'].run, inputs, True)
        grads = {k: v.grad.clone() for k, v in inputs.items()}
        ref = run_scan(torch_scan, inputs, True)
        worst = {'y': relative_difference(out, ref)}
        worst.update({f'd{k}': relative_difference(grads[k], v.grad) for k, v in inputs.items()})
        name, value = max(worst.items(), key=lambda kv: kv[1])
        limit = SCAN_LIMITS[dtype]
        ok = all(math.isfinite(v) for v in worst.values()) and value <= limit
        table.row('scan agreement', f'{label} fwd+bwd, L {plan.agree_length}', 'triton',
                  f'{value:.1e} (worst: {name})', f'<= {limit:.0e}', ok)


def scan_paths(plan: Plan, dtype: torch.dtype) -> Dict[str, Callable]:
    """The scans to time: Triton, PyTorch, and mamba_ssm where the dispatcher would run it."""
    paths = {'triton': BACKENDS['triton'].run, 'torch': BACKENDS['torch'].run}
    if BACKENDS['mamba_ssm'].why_not(ScanCall(plan.device.type, dtype)) is None:
        paths['mamba_ssm'] = BACKENDS['mamba_ssm'].run
    return paths


def scan_speed(plan: Plan, dtype_label: str, bandwidth: float, nominal: float,
               table: Table) -> None:
    dtype = DTYPES[dtype_label]
    paths = scan_paths(plan, dtype)
    if 'mamba_ssm' not in paths:
        why = BACKENDS['mamba_ssm'].why_not(ScanCall(plan.device.type, dtype))
        table.row('scan time', 'all L', 'mamba_ssm', f'not run: {why}'.replace('|', '/'))
    for length in plan.lengths:
        inputs = scan_inputs(plan, length, dtype)
        case = f'L {length}, batch {plan.batch}, {dtype_label}'
        for label, fn in paths.items():
            fwd = timed(lambda: run_scan(fn, inputs, False), plan)
            both = timed(lambda: run_scan(fn, inputs, True), plan)
            table.row('scan time', case, label, f'fwd {fwd * 1e3:.3f} ms, fwd+bwd '
                      f'{both * 1e3:.3f} ms')
            if label == 'triton':
                parts = []
                for what, seconds, backward in (('fwd', fwd, False), ('fwd+bwd', both, True)):
                    rate = essential_bytes(inputs, backward) / seconds
                    parts.append(f'{what} {rate / 1e9:.0f} GB/s = {share(rate, bandwidth)} '
                                 f'of copy, {share(rate, nominal)} of nominal')
                table.row('scan bandwidth', case, 'triton', '; '.join(parts))
        del inputs


# --- the backbones -------------------------------------------------------------------------


class PlainViT(nn.Module):
    """DeiT without timm: patch 16 conv, class token, learned position embedding, pre-norm
    blocks (attention on ``F.scaled_dot_product_attention``, MLP 4x with GELU), final norm.
    ``(B, 3, H, W)`` -> class token features ``(B, embed_dims)``."""

    def __init__(self, img_size: int, embed_dims: int, depth: int, heads: int):
        super().__init__()
        self.heads = heads
        self.patch_embed = nn.Conv2d(3, embed_dims, 16, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img_size // 16)**2, embed_dims) * .02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(norm1=nn.LayerNorm(embed_dims),
                               qkv=nn.Linear(embed_dims, 3 * embed_dims),
                               proj=nn.Linear(embed_dims, embed_dims),
                               norm2=nn.LayerNorm(embed_dims),
                               fc1=nn.Linear(embed_dims, 4 * embed_dims),
                               fc2=nn.Linear(4 * embed_dims, embed_dims))) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, M, C)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        b, length, c = x.shape
        for blk in self.blocks:
            qkv = blk.qkv(blk.norm1(x)).view(b, length, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, C / heads)
            attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, c)
            x = x + blk.proj(attn)
            x = x + blk.fc2(F.gelu(blk.fc1(blk.norm2(x))))
        return self.norm(x)[:, 0]


def build_deit(plan: Plan, size: int) -> nn.Module:
    """timm's DeiT at ``size`` px where timm imports (and the plan is DeiT-S), else
    :class:`PlainViT`; its ``.source`` says which."""
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and plan.vit == FULL['vit']:
        model = timm.create_model('deit_small_patch16_224', pretrained=False, img_size=size,
                                  num_classes=0)
        model.source = f'timm {timm.__version__} deit_small_patch16_224'
    else:
        model = PlainViT(size, **plan.vit)
        model.source = 'plain ViT (SDPA)'
    return model


def build_shufflemamba(plan: Plan, size: int) -> nn.Module:
    """ShuffleMamba of the plan's arch, classification layout, shuffle_rate 0.5."""
    return ShuffleMamba(arch=plan.arch, img_size=size, out_type='cls_token', shuffle_rate=0.5,
                        mixer_cfg=plan.mixer_cfg)


def train_step(model: nn.Module, images: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    """Forward (under autocast to ``dtype`` when given) and backward of the summed outputs;
    returns the features ``(B, C)`` (a backbone's first output)."""
    with (torch.autocast(images.device.type, dtype=dtype) if dtype is not None else
          contextlib.nullcontext()):
        out = model(images)
    outputs_sum(out).backward()
    return (out[0] if isinstance(out, tuple) else out).detach()


def backbone_agreement(plan: Plan, table: Table) -> None:
    torch.manual_seed(0)
    model = build_shufflemamba(plan, plan.check_size).to(plan.device).train()
    images = torch.randn(plan.check_batch, 3, plan.check_size, plan.check_size,
                         device=plan.device)
    results = {}
    for backend, dtype in (('triton', None), ('torch', None), ('triton', torch.bfloat16)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same shuffles in every run
        with use_scan_backend(model, backend):
            out = train_step(model, images, dtype)
        results[backend, dtype] = (out, {n: p.grad for n, p in model.named_parameters()})
    (out, grads), (ref, ref_grads) = results['triton', None], results['torch', None]
    worst = {'output': relative_difference(out, ref)}
    worst.update({n: relative_difference(g, ref_grads[n]) for n, g in grads.items()})
    name, value = max(worst.items(), key=lambda kv: kv[1])
    case = f'fp32 train fwd+bwd, {plan.check_size} px, batch {plan.check_batch}, shuffle 0.5'
    table.row('backbone agreement', case, 'triton vs torch', f'{value:.1e} (worst: {name})',
              f'<= {BACKBONE_LIMIT:.0e}', math.isfinite(value) and value <= BACKBONE_LIMIT)

    out, grads = results['triton', torch.bfloat16]
    values = [out, *grads.values()]
    finite = all(bool(torch.isfinite(v).all()) for v in values)
    table.row('backbone agreement', f'bf16 autocast train fwd+bwd, {plan.check_size} px',
              'triton', f'output and {len(grads)} gradients finite: {finite}; output '
              f'{relative_difference(out, ref):.1e} from fp32 torch', 'finite', finite)


def throughput(plan: Plan, table: Table) -> None:
    for size, batch in plan.batches.items():
        for name, build in zip(plan.names, (build_shufflemamba, build_deit)):
            torch.manual_seed(0)
            model = build(plan, size).to(plan.device)
            path = getattr(model, 'source', 'triton scan')
            images = torch.randn(batch, 3, size, size, device=plan.device)
            case = f'{name}, {size} px, batch {batch}, bf16 autocast'
            try:
                with use_scan_backend(model, 'triton'):
                    table.row('throughput', case + ', forward', path,
                              forward_speed(model, images, plan))
                    table.row('throughput', case + ', train step', path,
                              train_speed(model, images, plan))
            except torch.cuda.OutOfMemoryError:
                table.row('throughput', case, path, 'out of memory')
            del model, images


def forward_speed(model: nn.Module, images: Tensor, plan: Plan) -> str:
    """Images/s and peak memory of ``no_grad`` eval forwards under bf16 autocast."""
    model.eval()

    def forward() -> None:
        with torch.no_grad(), torch.autocast(plan.device.type, dtype=torch.bfloat16):
            model(images)

    reset_peak(plan.device)
    seconds = timed(forward, plan)
    return f'{len(images) / seconds:.1f} img/s, peak {peak_mib(plan.device)}'


def train_speed(model: nn.Module, images: Tensor, plan: Plan) -> str:
    """Images/s and peak memory of training steps (bf16 autocast forward, backward, AdamW)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        train_step(model, images, torch.bfloat16)
        optimizer.step()

    reset_peak(plan.device)
    seconds = timed(step, plan)
    return f'{len(images) / seconds:.1f} img/s, peak {peak_mib(plan.device)}'


# --- the run -------------------------------------------------------------------------------


def machine_rows(plan: Plan, bandwidth: float, nominal: float, table: Table) -> None:
    import triton
    name = (torch.cuda.get_device_name(plan.device) if plan.device.type == 'cuda' else
            'CPU (Triton interpreter: checks the code, measures nothing)')
    table.row('machine', 'device', '-', name)
    table.row('machine', 'versions', '-', f'torch {torch.__version__}, triton '
              f'{triton.__version__}, python {sys.version.split()[0]}')
    table.row('machine', 'memory bandwidth', '-', f'copy {gbps(bandwidth)} measured (1 GiB '
              f'device-to-device, read + write); nominal {gbps(nominal)}')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', help='also write the table to this file')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs (median kept)')
    parser.add_argument('--scan-dtype', choices=list(DTYPES), default='bf16',
                        help='input dtype of the timed scans')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny sizes on CPU under the Triton interpreter (checks the '
                        'code paths, measures nothing meaningful)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        plan = Plan(device=torch.device('cpu'), **SMOKE)
    elif not torch.cuda.is_available():
        print('no CUDA device: this check needs a GPU (or --smoke, to run its code on CPU)',
              file=sys.stderr)
        return 2
    else:
        plan = Plan(device=torch.device('cuda'), repeats=args.repeats, **FULL)  # type: ignore
        # float32 means float32 (the backbone agreement compares scans, not TF32 roundings)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if not triton_available():
        print('Triton >= 3.4 is not available: pip install triton (it comes with the CUDA '
              'builds of torch)', file=sys.stderr)
        return 2
    out = open(args.out, 'w') if args.out else None
    try:
        table = Table([sys.stdout] + ([out] if out else []))
        bandwidth, nominal = copy_bandwidth(plan), nominal_bandwidth(plan.device)
        table.part('machine', lambda: machine_rows(plan, bandwidth, nominal, table))
        table.part('scan agreement', lambda: scan_agreement(plan, table))
        table.part('backbone agreement', lambda: backbone_agreement(plan, table))
        table.part('scan time',
                   lambda: scan_speed(plan, args.scan_dtype, bandwidth, nominal, table))
        table.part('throughput', lambda: throughput(plan, table))
    finally:
        if out:
            out.close()
    return 1 if table.failed else 0


if __name__ == '__main__':
    sys.exit(main())
