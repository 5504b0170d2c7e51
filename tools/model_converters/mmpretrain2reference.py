"""Export an mmpretrain ShuffleMamba classifier checkpoint to the reference layout.

    python tools/model_converters/mmpretrain2reference.py SRC.pth DST.pth

Writes the entries upstream's training scripts save (``main_shuffle.py`` / ``main_reg.py``:
``'model'``: the raw weights, ``'model_ema'``: the EMA weights, as timm's ``ModelEma``
holds them, same keys), with the reference key names (see
``mmshufflemamba/models/utils/convert.py``).

Where the weights are in an mmengine checkpoint: when it was trained with an ``EMAHook``,
the hook swaps them before saving (``EMAHook.before_save_checkpoint``): ``state_dict``
holds the **EMA** weights (so that the file tests and deploys as the averaged model) and
``ema_state_dict`` the **raw** ones, each under ``'module.' + key`` (plus the average's
``steps``). This tool undoes the swap: ``ema_state_dict`` -> ``model``, ``state_dict`` ->
``model_ema``. A checkpoint without ``ema_state_dict`` (no EMA hook, or a file written by
``reference2mmpretrain.py``) has one set of weights: they go to ``model`` and no
``model_ema`` is written (the tool says so).

Back: ``reference2mmpretrain.py DST.pth X.pth`` reads ``model`` (the raw weights),
``--ema`` reads ``model_ema`` (what the mmengine checkpoint tested as).
"""
import argparse
from typing import Dict, Tuple

import torch
from torch import Tensor

import mmshufflemamba  # noqa: F401  (lets torch load mmengine checkpoints safely)
from mmshufflemamba.models.utils import mmpretrain_to_reference

PREFIX = 'module.'


def raw_and_ema(ckpt: dict) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """``(raw, ema)`` mmpretrain state dicts of a checkpoint; ``ema`` is None without EMA."""
    if 'state_dict' not in ckpt:  # a bare state dict
        return ckpt, None
    state, ema_state = ckpt['state_dict'], ckpt.get('ema_state_dict')
    if ema_state is None:
        return state, None
    # EMAHook.before_save_checkpoint swapped them: state_dict holds the averaged weights,
    # ema_state_dict['module.' + key] the raw ones
    raw = {k[len(PREFIX):]: v for k, v in ema_state.items() if k.startswith(PREFIX)}
    missing = sorted(set(state) - set(raw))
    extra = sorted(set(raw) - set(state))
    if missing or extra:
        raise KeyError(f'ema_state_dict does not match state_dict: missing {missing}, '
                       f'extra {extra}.')
    return {k: raw[k] for k in state}, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src')
    parser.add_argument('dst')
    args = parser.parse_args()
    ckpt = torch.load(args.src, map_location='cpu')
    raw, ema = raw_and_ema(ckpt)
    out = {'model': mmpretrain_to_reference(raw)}
    if ema is not None:
        out['model_ema'] = mmpretrain_to_reference(ema)
        note = ('raw weights (ema_state_dict) -> model, EMA weights (state_dict) -> '
                'model_ema')
    else:
        entry = (ckpt.get('meta') or {}).get('entry') if 'state_dict' in ckpt else None
        note = ('no EMA weights in the checkpoint (no ema_state_dict): its state_dict -> '
                'model, no model_ema written')
        if entry == 'model_ema':
            note += ' (these weights were converted from a model_ema entry)'
    torch.save(out, args.dst)
    print(f'{args.src} -> {args.dst}: {note}; {len(out["model"])} tensors per entry')


if __name__ == '__main__':
    main()
