"""Start a training stage as the reference scripts' ``--finetune`` does: from the previous
checkpoint's raw weights, with a fresh EMA.

Upstream reads ``checkpoint['model']`` (the raw weights) and builds a new ``ModelEma`` from
them. An mmengine checkpoint written with an EMA hook keeps the *averaged* weights under
``state_dict`` and the raw ones under ``ema_state_dict`` (``module.``-prefixed). On
``load_from``, mmengine's ``EMAHook`` then loads the averaged weights into the model, and
mmpretrain's ``EMAHook`` (what ``type='EMAHook'`` is under ``default_scope='mmpretrain'``)
swaps the raw weights back into the model but continues the saved average. With this hook,
a checkpoint loaded by ``load_from`` (not ``--resume``) has its raw weights put back into
``state_dict`` and ``ema_state_dict`` dropped before the model and the EMA hook read it:
the model starts from the raw weights and the EMA starts afresh from them, under either
EMA hook and any runner.
"""
from mmengine.hooks import Hook

from mmshufflemamba.registry import HOOKS

__all__ = ['LoadRawWeightsHook']


@HOOKS.register_module()
class LoadRawWeightsHook(Hook):
    """See the module docstring. ``dict(type='mmshufflemamba.LoadRawWeightsHook')`` in
    ``custom_hooks``; it runs before the EMA hook (priority ``VERY_HIGH``)."""

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner._resume:
            return
        ema = checkpoint.pop('ema_state_dict', None)
        if ema is None:
            runner.logger.info('load_from: the checkpoint has no EMA weights; its '
                               'state_dict (raw weights) is loaded as it is.')
            return
        raw = {k[len('module.'):]: v for k, v in ema.items() if k.startswith('module.')}
        checkpoint['state_dict'].update(raw)
        runner.logger.info(f'load_from: starting from the raw (non-EMA) weights of the '
                           f'checkpoint ({len(raw)} tensors) with a fresh EMA, as upstream '
                           f'fine-tunes.')
