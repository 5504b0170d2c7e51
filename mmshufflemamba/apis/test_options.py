"""``tools/test.py``'s options with the meaning each codebase's own ``tools/test.py`` gives
them, read from :data:`~.codebases.CODEBASES`."""
import copy
import os.path as osp
from typing import Optional

from .codebases import CODEBASES, Codebase
from .dataset_config import innermost_dataset
from .errors import InputError

__all__ = ['apply_test_options', 'add_result_dump']


def _codebase(cfg) -> Codebase:
    scope = cfg.get('default_scope')
    if scope not in CODEBASES:
        raise InputError(f'default_scope {scope!r}: --show/--show-dir/--tta/--out mean what '
                         f'the config\'s codebase makes them mean ({", ".join(CODEBASES)}); '
                         f'set default_scope in the config.')
    return CODEBASES[scope]


def apply_test_options(cfg, show: bool = False, show_dir: Optional[str] = None,
                       wait_time: float = 2.0, interval: int = 1, tta: bool = False,
                       out: Optional[str] = None) -> None:
    """``--show``/``--show-dir``/``--interval``/``--tta``/``--out`` for the config's codebase.

    Visualisation draws every ``interval``-th test image (default 1: every one, as
    mmpretrain; mmseg/mmdet's hooks default to every 50th). ``--tta`` uses the config's
    ``tta_model``/``tta_pipeline``, or a flip TTA where the codebase defines a default
    (mmdet, mmpretrain). ``--out``: mmseg writes the predicted label maps to that
    directory; mmdet/mmpretrain dump predictions to a pickle (see :func:`add_result_dump`).
    """
    if not (show or show_dir or tta or out):
        return
    codebase = _codebase(cfg)
    if tta and (show or show_dir) and not codebase.tta_with_show:
        raise InputError(f"--tta with --show/--show-dir: {codebase.scope}'s "
                         'VisualizationHook cannot draw test-time-augmented batches; run the '
                         'two apart.')
    if show or show_dir:
        hook = cfg.get('default_hooks', {}).get('visualization')
        if hook is None:
            raise InputError('--show/--show-dir need a visualization hook in '
                             'default_hooks (the codebases\' default_runtime has one).')
        hook.update({'interval': interval, codebase.vis_switch: True, 'show': show,
                     'wait_time': wait_time})
        if codebase.show_dir == 'hook.out_dir':
            hook.out_dir = show_dir
        elif show_dir and codebase.show_dir == 'hook.test_out_dir':
            hook.test_out_dir = osp.abspath(show_dir)
        elif show_dir:  # the visualizer's backends write under save_dir
            cfg.visualizer.save_dir = osp.abspath(show_dir)
    if tta:
        _apply_tta(cfg, codebase)
    if out and codebase.out_dir:
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    elif out and codebase.out_suffixes and not out.endswith(codebase.out_suffixes):
        raise InputError(f'--out {out}: {codebase.scope} dumps predictions to a '
                         f'{codebase.out_suffixes[0]} file.')


def _apply_tta(cfg, codebase: Codebase) -> None:
    from mmengine.config import ConfigDict
    if codebase.tta_refuses_masks and cfg.model.get('roi_head', {}).get('mask_head'):
        raise InputError(f"--tta: {codebase.scope}'s test-time augmentation "
                         f"({codebase.tta_model['type']}) does not support instance "
                         'segmentation, so it cannot run Mask R-CNN; test without --tta.')
    dataset = innermost_dataset(cfg.test_dataloader.dataset)
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        if codebase.tta_model is None:
            raise InputError('--tta needs tta_model and tta_pipeline in the config '
                             f"({codebase.scope}'s _base_/datasets and default_runtime "
                             'define them).')
        cfg.setdefault('tta_model', copy.deepcopy(codebase.tta_model))
        tta_pipeline = copy.deepcopy(list(dataset.pipeline))
        pack = copy.deepcopy(codebase.tta_pack) or tta_pipeline[-1]
        tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], [pack]])
        cfg.setdefault('tta_pipeline', tta_pipeline)
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset.pipeline = cfg.tta_pipeline


def add_result_dump(runner, out: Optional[str], out_item: Optional[str] = None) -> None:
    """``--out`` as a pickle of the predictions (mmdet's DumpDetResults, mmengine's
    DumpResults for mmpretrain, unless ``--out-item metrics``, which tools/test.py writes
    itself); mmseg's label maps are the evaluator's (:func:`apply_test_options`)."""
    if not out or out_item == 'metrics':
        return
    codebase = _codebase(runner.cfg)
    if codebase.dump_metric is not None:
        runner.test_evaluator.metrics.append(Codebase.load(codebase.dump_metric)(
            out_file_path=out))
