"""Convert a reference checkpoint (Vim, VideoMamba, ShuffleMamba, Mamba-Reg) to mmpretrain.

    python tools/model_converters/reference2mmpretrain.py SRC.pth DST.pth [--ema]
                                                           [--rmsnorm-to-layernorm]

Reads the ``model`` entry, the raw weights in upstream's checkpoints (``model_ema``, the
EMA weights, with ``--ema``; a bare state dict also works), the slots
``mmpretrain2reference.py`` writes them to, and writes ``{'state_dict': ..., 'meta': ...}``
for ``ImageClassifier`` with a ``mmshufflemamba.ShuffleMamba`` backbone. Match the
backbone config to the weights: ``cls_token='middle'`` for Vim's ``*midclstok*`` files,
``'head'`` for ShuffleMamba and VideoMamba, ``cls_token=None, num_registers=k,
out_type='registers'`` with ``RegisterClsHead`` for ``mambar_*``; ``norm_type`` as trained
(RMSNorm for all of these but ShuffleMamba-M) and ``patch_stride=8`` for Vim-T+/S+. The
converter prints what the weights say (width, depth, norm, patch grid and the stride it
implies, registers and their head reduction) before writing.
The reference files are trusted pickles: they load with ``weights_only=False``.

``--rmsnorm-to-layernorm`` writes RMSNorm weights as LayerNorm weights with zero biases:
what upstream ShuffleMamba's segmentation gets when it loads an RMSNorm checkpoint into its
LayerNorm backbones with ``strict=False`` (the base and 40-layer large paper configs).
Only for reproducing that; the model is not the one the weights were trained as.
"""
import argparse

import torch

from mmshufflemamba.models.utils import (checkpoint_norm_type, describe_reference,
                                         is_register_model, reference_to_mmpretrain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--ema', action='store_true',
                        help='convert the model_ema entry (EMA weights) instead of model '
                        '(raw weights)')
    parser.add_argument('--rmsnorm-to-layernorm', action='store_true',
                        help='add zero biases to the block and final norms, as upstream\'s '
                        'segmentation loads RMSNorm weights into LayerNorm backbones')
    args = parser.parse_args()
    ckpt = torch.load(args.src, map_location='cpu', weights_only=False)
    entry = 'model_ema' if args.ema else 'model'
    if isinstance(ckpt, dict) and ckpt.get(entry) is not None:
        reference = ckpt[entry]
    elif args.ema:  # upstream saves 'model_ema': None when trained without --model-ema
        raise SystemExit(f'{args.src} has no EMA weights: model_ema is '
                         f'{"None" if "model_ema" in ckpt else "absent"} '
                         f'(keys: {list(ckpt)}).')
    elif isinstance(ckpt, dict) and 'model' in ckpt:
        raise SystemExit(f'{args.src}: its model entry is None.')
    else:
        reference = ckpt
    for line in describe_reference(reference):
        print(line)
    state = reference_to_mmpretrain(reference)
    if args.rmsnorm_to_layernorm:
        if checkpoint_norm_type(state, 'backbone.') == 'LN':
            raise SystemExit('--rmsnorm-to-layernorm: the checkpoint is LayerNorm already.')
        norms = [k for k in state if k.startswith('backbone.') and
                 k.endswith(('.norm.weight', 'norm_f.weight'))]
        for key in norms:
            state[key[:-len('weight')] + 'bias'] = state[key].new_zeros(state[key].shape)
        print(f'--rmsnorm-to-layernorm: {len(norms)} norms written as LayerNorm with zero '
              'bias (upstream segmentation\'s strict=False load); use norm_type=\'LN\'')
    meta = dict(converted_from=args.src, entry=entry, registers=is_register_model(reference))
    torch.save({'state_dict': state, 'meta': meta}, args.dst)
    print(f'{args.src} [{entry}] -> {args.dst}: {len(state)} tensors'
          f'{" (register layout)" if meta["registers"] else ""}')


if __name__ == '__main__':
    main()
