"""Two nodes on loopback: same result as one process, and no hang when a rank dies."""
import os
import os.path as osp
import signal
import subprocess
import time

import pytest
import torch
from helpers import CLS, ROOT, free_port, logged_scalars, run_tool, write_child_config

from mmshufflemamba.datasets import make_toy_classification

TIMEOUT_S = 30  # env_cfg.dist_cfg.timeout: how long a rank waits in a collective


def config_for(tmp_path, batch_size):
    data = str(tmp_path / 'toy_cls')
    if not osp.isdir(data):
        make_toy_classification(data, train_per_class=8, val_per_class=1)
    # no random flips: each process has its own numpy stream, one process has one; and
    # one seed for all ranks (diff_rank_seed=False), so that each rank draws the shuffle
    # permutations the one process draws (the configs give every rank its own stream)
    return write_child_config(
        tmp_path / f'cls_b{batch_size}.py', CLS,
        f"data_root = '{data}'\n"
        "pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]\n"
        f'train_dataloader = dict(batch_size={batch_size}, '
        'dataset=dict(data_root=data_root, pipeline=pipeline))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'test_dataloader = val_dataloader\n'
        'train_cfg = dict(max_iters=6, val_interval=1000)\n'
        f'env_cfg = dict(dist_cfg=dict(backend="gloo", timeout={TIMEOUT_S}))\n'
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=6))\n'
        'randomness = dict(diff_rank_seed=False)\n')


def children(pid):
    """Direct child processes (torchrun starts each worker in a session of its own)."""
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def kill_tree(pid):
    for child in children(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launch_node(config, work_dir, rank, port, log, extra=()):
    env = dict(os.environ, NNODES='2', NODE_RANK=str(rank), MASTER_ADDR='127.0.0.1',
               PORT=str(port), GPUS='1')
    return subprocess.Popen(['bash', 'tools/dist_train.sh', config, '--work-dir', work_dir,
                             *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.slow
def test_two_nodes_match_one_process(tmp_path):
    single = str(tmp_path / 'single')
    run_tool('tools/train.py', config_for(tmp_path, 16), '--work-dir', single)

    config, two = config_for(tmp_path, 8), str(tmp_path / 'two_nodes')
    port = free_port()
    logs = [open(tmp_path / f'node{r}.log', 'w') for r in (0, 1)]
    nodes = [launch_node(config, two, r, port, logs[r]) for r in (0, 1)]
    codes = [node.wait(timeout=600) for node in nodes]
    assert codes == [0, 0], [(tmp_path / f'node{r}.log').read_text()[-3000:] for r in (0, 1)]
    assert sorted(p for p in os.listdir(two) if p.endswith('.pth')) == ['iter_6.pth']

    a = torch.load(osp.join(single, 'iter_6.pth'))['state_dict']
    b = torch.load(osp.join(two, 'iter_6.pth'))['state_dict']
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f'max |weight difference| one process vs two nodes after 6 iterations: {worst:.2e}')
    assert worst < 1e-4
    loss_a = [r['loss'] for r in logged_scalars(single)[-1] if 'loss' in r]
    loss_b = [r['loss'] for r in logged_scalars(two)[-1] if 'loss' in r]
    print('losses, one process:', loss_a, 'two nodes (rank 0):', loss_b)
    assert len(loss_a) == len(loss_b) == 6


@pytest.mark.slow
def test_dead_rank_makes_the_other_exit(tmp_path):
    config, work_dir = config_for(tmp_path, 8), str(tmp_path / 'work')
    port = free_port()
    logs = [open(tmp_path / f'node{r}.log', 'w') for r in (0, 1)]
    extra = ['--cfg-options', 'train_cfg.max_iters=100000']
    nodes = [launch_node(config, work_dir, r, port, logs[r], extra) for r in (0, 1)]
    try:
        deadline = time.time() + 300
        while 'Iter(train)' not in (tmp_path / 'node0.log').read_text():
            assert time.time() < deadline and nodes[0].poll() is None, \
                (tmp_path / 'node0.log').read_text()[-3000:]
            time.sleep(1)
        workers = children(nodes[1].pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)  # the rank on node 1 dies mid-training
        killed_at = time.time()
        code = nodes[0].wait(timeout=TIMEOUT_S + 120)  # raises if node 0 hangs
        waited = time.time() - killed_at
        print(f'node 0 exited with code {code} {waited:.1f} s after the rank on node 1 '
              f'was killed')
        assert code != 0
        assert nodes[1].wait(timeout=60) != 0
    finally:
        for node in nodes:
            kill_tree(node.pid)


def gloo_worker_threads():
    """Names of this process's threads that gloo's process group runs its work on."""
    names = []
    for tid in os.listdir('/proc/self/task'):
        try:
            with open(f'/proc/self/task/{tid}/comm') as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that ended while listed
            pass
    return [n for n in names if n.startswith('pt_gloo')]


@pytest.mark.skipif(not osp.isdir('/proc/self/task'), reason='reads threads from /proc')
def test_finish_distributed_joins_gloo_threads_while_a_cycle_holds_the_group():
    """A runner's reference cycles keep the DDP wrapper, so the group, alive after the run.
    finish_distributed must still end gloo's worker threads before it returns: a thread
    left behind can abort the process at interpreter exit (stop 32's CI run)."""
    import torch.distributed as dist

    from mmshufflemamba.apis import finish_distributed
    assert not dist.is_initialized()
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        ddp(torch.randn(3, 4)).sum().backward()
        assert gloo_worker_threads()  # they name themselves when they start: after a collective
        ddp.cycle = [ddp]  # as the runner's hooks and wrapper refer to each other
        del ddp
        finish_distributed()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert not gloo_worker_threads()
