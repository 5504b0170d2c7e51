"""Running the tools as users do, and reading what they write."""
import ast
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from typing import Dict, List

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
    import torch
    seq = torch.arange(layout.num_tokens)[None, :, None]
    patch_index = layout.patches(seq)[0, :, 0]
    register_index = layout.registers(seq)[0, :, 0] if layout.num_registers else None
    order = None
    if layout.cls_index is not None or layout.num_registers:
        M = layout.num_patches
        src = torch.arange(M + max(layout.num_registers, 1))[None, :, None]
        order = layout.arrange(src[:, :M], src[:, M:])[0, :, 0]
    return patch_index, register_index, order
