"""Test-only hook (imported by the configs tests/test_rank_seeds.py writes): records, per
rank and per training iteration, the samples of the batch, the layer-wise shuffle plan,
the drop-path masks, the lr and a digest of torch's CPU random state, one JSON line per
iteration in ``WORK_DIR/probe_rank{R}.jsonl``."""
import hashlib
import json
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.plans, self.masks = [], []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = model.backbone
        plan = backbone.shuffle.plan

        def recording_plan(num_tokens):
            perms = plan(num_tokens)
            self.plans.append([None if p is None else p.tolist() for p in perms])
            return perms

        backbone.shuffle.plan = recording_plan
        drop_path = backbone.drop_path.forward

        def recording_drop_path(x):
            out = drop_path(x)
            self.masks.append([bool((o == 0).all()) for o in out])  # dropped samples
            return out

        backbone.drop_path.forward = recording_drop_path

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        rank = get_rank()
        record = dict(
            iter=runner.iter + 1,
            samples=[int(s.sample_idx) for s in data_batch['data_samples']],
            plans=self.plans,
            drop_path=self.masks,
            lr=runner.optim_wrapper.get_lr()['lr'][0],
            rng=hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
        self.plans, self.masks = [], []
        with open(osp.join(runner.work_dir, f'probe_rank{rank}.jsonl'), 'a') as f:
            f.write(json.dumps(record) + '\n')
