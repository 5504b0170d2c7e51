"""Running the tools as users do, and reading what they write."""
import ast
import copy
import functools
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from types import ModuleType
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# the toy configs the tool tests run (paths relative to ROOT)
UPERNET = 'configs/upernet/upernet_shufflemamba-toy_1xb8-300_toyade-64x64.py'
MASK_RCNN = 'configs/mask_rcnn/mask-rcnn_shufflemamba-toy_fpn_1x_toycoco.py'
CLS = 'configs/shufflemamba/shufflemamba-toy_1xb32_toycls.py'

_SAVE_UNTRAINED = '''
import sys, torch
from mmshufflemamba.utils import build_model_from_config
for config, out in zip(sys.argv[1::2], sys.argv[2::2]):
    model, _ = build_model_from_config(config)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out)
'''


def run_tool(*args: str, check: bool = True, timeout: int = 900, env: dict = None,
             shell_script: bool = False) -> subprocess.CompletedProcess:
    """Run ``python <args>`` (or ``bash <args>``) in the repository root."""
    cmd = ['bash', *args] if shell_script else [sys.executable, *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    if check and proc.returncode:
        raise AssertionError(f'{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n'
                             f'{proc.stderr[-4000:]}')
    return proc


def printed_metrics(proc: subprocess.CompletedProcess) -> Dict[str, float]:
    """The ``metrics: {...}`` line tools/test.py prints last."""
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('metrics:')][-1]
    return ast.literal_eval(line[len('metrics:'):].strip())


def logged_scalars(work_dir: str) -> List[List[dict]]:
    """The ``scalars.json`` records of each run in a work dir, oldest run first."""
    records = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            records.append([json.loads(line) for line in f if line.strip()])
    return records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_script(path: str) -> ModuleType:
    """A script of the repository (a path relative to ROOT, e.g. benchmarks/gpu_check.py)
    imported as a module, to test its functions without running it."""
    import importlib.util
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def _parsed_config(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def load_config(path: str):
    """``Config.fromfile`` of a config under configs/ (a path relative to ROOT, or
    absolute), parsed once per test process (executing its chain of bases; the bases'
    lookups in the codebases' metafiles are remembered across configs by conftest). The
    caller gets its own copy."""
    return copy.deepcopy(_parsed_config(osp.join(ROOT, path)))


def write_child_config(path, base: str, body: str) -> str:
    """A config file that inherits ``base`` (a path under configs/) and adds ``body``."""
    path.write_text(f"_base_ = '{osp.join(ROOT, base)}'\n{body}")
    return str(path)


def data_overrides(root: str) -> str:
    """Config lines that point the train/val/test datasets of a toy config at ``root``."""
    return (f"data_root = '{root}'\n"
            'train_dataloader = dict(dataset=dict(data_root=data_root))\n'
            'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
            'test_dataloader = val_dataloader\n')


def save_untrained_checkpoints(*config_and_path: str) -> None:
    """Write an initialised, untrained checkpoint of each config: arguments are pairs
    ``config, path`` (one subprocess for all, as a user's script would run)."""
    if not config_and_path or len(config_and_path) % 2:
        raise ValueError('expected pairs of config and checkpoint path')
    run_tool('-c', _SAVE_UNTRAINED, *config_and_path)


def token_positions(layout):
    """Where ``layout`` puts each token, read through its own ``arrange``/``patches``/
    ``registers`` on index tensors: (sequence index of every patch in raster order,
    sequence index of every register, source index of every sequence slot into
    ``cat([patches, extra])``, or None for patches alone)."""
    seq = torch.arange(layout.num_tokens)[None, :, None]
    patch_index = layout.patches(seq)[0, :, 0]
    register_index = layout.registers(seq)[0, :, 0] if layout.num_registers else None
    order = None
    if layout.cls_index is not None or layout.num_registers:
        M = layout.num_patches
        src = torch.arange(M + max(layout.num_registers, 1))[None, :, None]
        order = layout.arrange(src[:, :M], src[:, M:])[0, :, 0]
    return patch_index, register_index, order


def scan_inputs(batch: int, channels: int, state: int, length: int, B_kind: str = 'var',
                C_kind: str = 'var', groups: int = 2, dtype: torch.dtype = torch.float64,
                seed: int = 0) -> Dict[str, Tensor]:
    """Seeded leaf inputs of a selective scan (``u, delta, A, B, C, D, z, delta_bias``).

    ``B_kind``/``C_kind``: ``'var'`` ``(b, N, L)``, ``'shared'`` ``(D, N)`` or ``'group'``
    ``(b, groups, N, L)``. ``A`` is in ``[-1.5, -0.5]`` so that every path stays stable.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    def matrix(kind):
        if kind == 'var':
            return randn(batch, state, length)
        if kind == 'shared':
            return randn(channels, state)
        return randn(batch, groups, state, length)

    A = (-0.5 - torch.rand(channels, state, generator=g, dtype=dtype)).requires_grad_()
    return dict(u=randn(batch, channels, length), delta=randn(batch, channels, length),
                A=A, B=matrix(B_kind), C=matrix(C_kind), D=randn(channels),
                z=randn(batch, channels, length), delta_bias=randn(channels))


def assert_scan_matches_reference(scan: Callable, inputs: Dict[str, Optional[Tensor]],
                                  delta_softplus: bool = True, return_last_state: bool = False,
                                  use_output: bool = True, seed: int = 1) -> None:
    """``scan(**inputs, ...)`` equals ``selective_scan_reference`` run in float64 on the same
    values, in its output (and last state) and in the gradient of every given input of a
    seeded random weighting of them (of the last state alone when not ``use_output``).

    float64 inputs: within 1e-10 (gradients 1e-9 relative). Other dtypes: within 1e-5 of
    each tensor's largest magnitude. The output keeps ``u``'s dtype, gradients their
    inputs' dtypes.
    """
    from mmshufflemamba.ops import selective_scan_reference
    given = {k: v for k, v in inputs.items() if v is not None}
    exact = {k: v.detach().double().requires_grad_() for k, v in given.items()}
    options = dict(delta_softplus=delta_softplus, return_last_state=return_last_state)
    got = scan(**inputs, **options)
    want = selective_scan_reference(**dict(inputs, **exact), **options)
    got, want = ((out, ) if not return_last_state else out for out in (got, want))
    assert got[0].dtype == given['u'].dtype, got[0].dtype
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    used = slice(0 if use_output else 1, None)  # without y, its gradient is None

    def grads(outs, wrt):
        loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs[used], weights[used]))
        found = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
        return [torch.zeros_like(x) if d is None else d for x, d in zip(wrt.values(), found)]

    names = ['y', 'last state'][:len(want)] + [f'grad of {k}' for k in given]
    for name, a, b in zip(names, [*got, *grads(got, given)], [*want, *grads(want, exact)]):
        if name.startswith('grad of '):
            assert a.dtype == given[name[8:]].dtype, f'{name}: {a.dtype}'
        if a.dtype == torch.float64:
            tol = 1e-10 if name in ('y', 'last state') else 1e-9
            torch.testing.assert_close(a, b, rtol=tol, atol=1e-10, msg=name)
        else:
            err = ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
            assert err < 1e-5, f'{name}: relative difference {err:.2e} ({a.dtype})'


def triton_scan_with_tiles(chunk: int, block_d: int) -> Callable:
    """The Triton scan with ``chunk`` steps per chunk and ``block_d`` channels per program
    (powers of two), called as every backend is (``selective_scan``'s arguments)."""
    from mmshufflemamba.ops.triton_scan import _selective_scan_triton
    return functools.partial(_selective_scan_triton, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False, chunk=chunk,
                             block_d=block_d)


class RecordOps(TorchDispatchMode):
    """Runs every op as it is and records its name (``names``): what a dispatch mode (as
    torch.export's FakeTensors) sees of a call."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
