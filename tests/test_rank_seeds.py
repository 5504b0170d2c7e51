"""Per-rank random streams (upstream's ``seed + rank``) and lr scaled with the real total
batch (upstream's ``lr * batch * world_size / 512``), in every config and on two processes."""
import glob
import json
import os
import os.path as osp
import re

import pytest
import torch
from helpers import CLS, ROOT, free_port, load_config, run_tool, write_child_config

from mmshufflemamba.datasets import make_toy_classification

CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                            recursive=True)
    if '_base_' not in p)
TESTS = osp.dirname(osp.abspath(__file__))


def expected_seed(config):
    name = osp.basename(config)
    if 'toy' in name:
        return 0
    # upstream's segmentation _base_ seed: the paper configs and the adapter built on them
    if '_paper_' in name or name.startswith('upernet_shufflemamba-adapter'):
        return 873369272
    return None


@pytest.fixture(scope='module')
def loaded():
    return {config: load_config(config) for config in CONFIGS}


def test_every_config_seeds_each_rank_and_keeps_its_seed(loaded):
    assert len(loaded) >= 15
    wrong = {c: cfg.get('randomness') for c, cfg in loaded.items()
             if not (cfg.get('randomness') or {}).get('diff_rank_seed')
             or cfg.randomness.get('seed') != expected_seed(c)}
    assert not wrong, wrong


def test_every_config_says_the_batch_its_lr_is_for(loaded):
    """auto_scale_lr.base_batch_size is the total batch of the recipe (GPUs x batch of
    the name's NxbM, mmdet's 8 x 2 for the COCO configs), and scaling is off by default."""
    wrong = {}
    for config, cfg in loaded.items():
        scale = cfg.get('auto_scale_lr') or {}
        base, batch = scale.get('base_batch_size'), cfg.train_dataloader.batch_size
        name = osp.basename(config)
        gpus_x_batch = re.search(r'_(\d+)xb(\d+)', name)
        if gpus_x_batch:
            expected = int(gpus_x_batch[1]) * int(gpus_x_batch[2])
            ok = batch == int(gpus_x_batch[2]) and base == expected
        elif name.startswith('mask-rcnn') and 'toy' not in name:
            ok = base == 8 * batch == 16  # mmdet's 8 GPUs x 2 images
        elif 'toy' in name:
            ok = base == batch  # one process
        else:
            ok = base is not None and base % batch == 0
        if not ok or scale.get('enable', False):
            wrong[config] = (scale, batch)
    assert not wrong, wrong


def test_auto_scale_lr_needs_base_batch_size(tmp_path):
    proc = run_tool('tools/train.py', CLS, '--work-dir', str(tmp_path / 'w'), '--auto-scale-lr',
                    '--cfg-options', 'auto_scale_lr.base_batch_size=None', check=False)
    assert proc.returncode != 0
    assert 'no auto_scale_lr.base_batch_size' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


PER_RANK = 4  # images per rank and iteration; 16 training images: an epoch is 2 iterations


@pytest.fixture(scope='module')
def two_rank_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('rank_seeds')
    data = str(tmp / 'toy_cls')
    make_toy_classification(data, train_per_class=4, val_per_class=1)
    # every layer after the first may shuffle, drop-path on, no random image transforms,
    # constant lr (so the logged lr is the scaled one), the probe hook records each rank
    return write_child_config(
        tmp / 'cls.py', CLS,
        f"data_root = '{data}'\n"
        "custom_imports = dict(imports=['mmshufflemamba', 'rank_probe'], "
        'allow_failed_imports=False)\n'
        "pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]\n"
        f'train_dataloader = dict(batch_size={PER_RANK}, '
        'dataset=dict(data_root=data_root, pipeline=pipeline))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'test_dataloader = val_dataloader\n'
        'model = dict(backbone=dict(shuffle_rate=1.0, drop_path_rate=0.3))\n'
        'param_scheduler = []\n'
        'train_cfg = dict(val_interval=1000)\n'
        'env_cfg = dict(dist_cfg=dict(backend="gloo", timeout=60))\n'
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))\n'
        'custom_hooks = [\n'
        "    dict(type='EMAHook', momentum=0.05, priority='ABOVE_NORMAL'),\n"
        "    dict(type='mmshufflemamba.RNGStateHook'),\n"
        "    dict(type='RankProbeHook'),\n"
        ']\n')


def train(config, work_dir, iters, *extra, options=(), processes=2):
    env = dict(PYTHONPATH=os.pathsep.join(filter(None, [TESTS, os.environ.get('PYTHONPATH')])))
    args = [config, '--work-dir', work_dir, '--auto-scale-lr', *extra, '--cfg-options',
            f'train_cfg.max_iters={iters}', *options]
    if processes == 1:
        return run_tool('tools/train.py', *args, env=env, timeout=600)
    env.update(GPUS=str(processes), PORT=str(free_port()))
    return run_tool('tools/dist_train.sh', *args, shell_script=True, env=env, timeout=600)


def train_two_ranks(config, work_dir, iters, *extra):
    return train(config, work_dir, iters, *extra)


def probes(work_dir):
    out = []
    for rank in (0, 1):
        with open(osp.join(work_dir, f'probe_rank{rank}.jsonl')) as f:
            out.append({r['iter']: r for r in map(json.loads, f)})
    return out


def weights(path):
    ckpt = torch.load(path)
    return {**ckpt['state_dict'], **{'ema.' + k: v for k, v in ckpt['ema_state_dict'].items()}}


@pytest.mark.slow
def test_two_ranks_draw_apart_share_the_data_order_and_resume_exactly(tmp_path,
                                                                       two_rank_config):
    from mmengine.dataset import InfiniteSampler
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    proc = train_two_ranks(two_rank_config, straight, 4)
    # the run interrupted after iteration 2 is the straight run's iter_2.pth (saved at
    # the same point of the same run), resumed in a work dir of its own
    proc_resumed = train_two_ranks(two_rank_config, resumed, 4, '--resume',
                                   osp.join(straight, 'iter_2.pth'))
    assert 'resumed' in proc_resumed.stdout + proc_resumed.stderr
    ranks = probes(straight)
    assert all(sorted(r) == [1, 2, 3, 4] for r in ranks)

    # (a) each rank its own stream: other shuffle plans, drop-path masks, generator states
    for it in (1, 2, 3, 4):
        r0, r1 = ranks[0][it], ranks[1][it]
        assert r0['plans'] != r1['plans'] and r0['rng'] != r1['rng'], it
        assert r0['plans'][0][-1] is not None  # the last layer always shuffles at rate 1
    assert [ranks[0][i]['drop_path'] for i in (1, 2, 3, 4)] != \
        [ranks[1][i]['drop_path'] for i in (1, 2, 3, 4)]

    # (b) the data order: rank r takes every other sample of the one stream that
    # diff_rank_seed=False gives (mmengine passes randomness.seed = 0 to the sampler)
    stream = iter(InfiniteSampler(list(range(16)), shuffle=True, seed=0))
    order = [next(stream) for _ in range(4 * 2 * PER_RANK)]
    seen = [ranks[0][it]['samples'] + ranks[1][it]['samples'] for it in (1, 2, 3, 4)]
    expected = [order[k * 2 * PER_RANK:(k + 1) * 2 * PER_RANK] for k in range(4)]
    expected = [batch[0::2] + batch[1::2] for batch in expected]
    assert seen == expected
    for epoch in (0, 1):  # every sample once per epoch
        assert sorted(seen[2 * epoch] + seen[2 * epoch + 1]) == list(range(16))

    # --auto-scale-lr with the real world size: 2 ranks x 4 = 8 images, config lr 2e-3
    # for 32 -> 5e-4 on both ranks
    assert ('LR is set based on batch size of 32 and the current batch size is 8'
            in proc.stdout + proc.stderr)
    lrs = [r[it]['lr'] for r in ranks for it in r]
    assert lrs == pytest.approx([2e-3 * 8 / 32] * 8), lrs

    # (c) 2 + --resume + 2 repeats 4 on each rank: the same draws, data and weights
    again = probes(resumed)
    for rank in (0, 1):
        assert sorted(again[rank]) == [3, 4]
        assert [again[rank][i] for i in (3, 4)] == [ranks[rank][i] for i in (3, 4)], rank
    ckpt = torch.load(osp.join(straight, 'iter_2.pth'))
    saved = ckpt['meta']['torch_rng_state']
    assert saved['world_size'] == 2 and len(saved['ranks']) == 2
    assert not torch.equal(saved['ranks'][0]['cpu'], saved['ranks'][1]['cpu'])
    final, theirs = weights(osp.join(straight, 'iter_4.pth')), weights(
        osp.join(resumed, 'iter_4.pth'))
    assert final.keys() == theirs.keys()
    assert not [k for k in final if not torch.equal(final[k], theirs[k])]


@pytest.mark.slow
def test_resume_of_a_run_without_seed_keeps_its_data_order(tmp_path, two_rank_config):
    """randomness.seed=None, as the ImageNet/ADE20K/COCO recipes: the run draws its seed,
    and --resume takes it from the checkpoint (mmengine alone would build the resumed
    run's sampler with a fresh seed), so the data order goes on where it stopped."""
    from mmengine.dataset import InfiniteSampler
    work_dir = str(tmp_path / 'work')
    no_seed = ['randomness.seed=None']
    train(two_rank_config, work_dir, 2, options=no_seed, processes=1)
    train(two_rank_config, work_dir, 4, '--resume', options=no_seed, processes=1)
    seeds = [torch.load(osp.join(work_dir, f'iter_{i}.pth'))['meta']['seed'] for i in (2, 4)]
    assert seeds[0] == seeds[1], seeds
    stream = iter(InfiniteSampler(list(range(16)), shuffle=True, seed=seeds[0]))
    with open(osp.join(work_dir, 'probe_rank0.jsonl')) as f:
        seen = [json.loads(line)['samples'] for line in f]
    assert seen == [[next(stream) for _ in range(PER_RANK)] for _ in range(4)]


class _Runner:
    """What RNGStateHook uses of a runner, in one process."""

    def __init__(self, hook):
        import logging
        self._resume, self.warnings, self.saved = True, [], None
        self.logger = logging.getLogger('rng_state_test')
        self.logger.warning = self.warnings.append
        self._hook = hook

    def save_checkpoint(self):  # as mmengine's (master_only): calls the hook, then writes
        self.saved = {'meta': {}}
        self._hook.before_save_checkpoint(self, self.saved)


def test_rng_state_hook_saves_a_state_per_rank_and_refuses_another_world_size():
    from mmshufflemamba.engine import RNGStateHook
    hook = RNGStateHook()
    runner = _Runner(hook)
    hook.before_run(runner)
    hook.before_run(runner)  # wraps once
    torch.manual_seed(1)
    runner.save_checkpoint()  # through the wrapper: the (one-process) gather
    saved = runner.saved['meta']['torch_rng_state']
    assert saved['world_size'] == 1 and len(saved['ranks']) == 1
    assert torch.equal(saved['ranks'][0]['cpu'], torch.get_rng_state())
    expected = torch.rand(3)

    torch.rand(5)  # resumed: this rank's own state comes back before the first iteration
    hook.after_load_checkpoint(runner, runner.saved)
    hook.before_train_iter(runner, 0)
    assert torch.equal(torch.rand(3), expected) and not runner.warnings

    # a checkpoint of two processes in a one-process run: fresh seeds, and a warning
    two = {'meta': {'torch_rng_state': dict(world_size=2, ranks=[saved['ranks'][0]] * 2)}}
    hook.after_load_checkpoint(runner, two)
    assert hook._pending is None
    assert len(runner.warnings) == 1 and '2 process(es); this run has 1' in runner.warnings[0]
    assert 'will not repeat' in runner.warnings[0]

    # the earlier format (one state, no ranks) reads as a one-process checkpoint
    hook.after_load_checkpoint(runner, {'meta': {'torch_rng_state': saved['ranks'][0]}})
    assert hook._pending is saved['ranks'][0]
