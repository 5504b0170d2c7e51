"""Export an mmpretrain ShuffleMamba classifier checkpoint to the reference layout.

    python tools/model_converters/mmpretrain2reference.py SRC.pth DST.pth

Writes ``{'model': state_dict}`` with the reference key names (see
``mmshufflemamba/models/utils/convert.py``).
"""
import argparse

import torch

import mmshufflemamba  # noqa: F401  (lets torch load mmengine checkpoints safely)
from mmshufflemamba.models.utils import mmpretrain_to_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src')
    parser.add_argument('dst')
    args = parser.parse_args()
    ckpt = torch.load(args.src, map_location='cpu')
    state = mmpretrain_to_reference(ckpt.get('state_dict', ckpt))
    torch.save({'model': state}, args.dst)
    print(f'{args.src} -> {args.dst}: {len(state)} tensors')


if __name__ == '__main__':
    main()
