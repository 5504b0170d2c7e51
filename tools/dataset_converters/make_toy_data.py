"""Write the built-in toy datasets (real on-disk layouts, procedurally drawn).

    python tools/dataset_converters/make_toy_data.py cls data/toy_cls     # ImageNet layout
    python tools/dataset_converters/make_toy_data.py ade data/toy_ade     # ADE20K layout
    python tools/dataset_converters/make_toy_data.py coco data/toy_coco   # COCO instances
"""
import argparse

from mmshufflemamba.datasets import make_toy_ade20k, make_toy_classification, make_toy_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=['cls', 'ade', 'coco'])
    parser.add_argument('out', help='output folder')
    parser.add_argument('--num-classes', type=int, default=4, help='cls only')
    parser.add_argument('--num-train', type=int, help='train images (per class for cls)')
    parser.add_argument('--num-val', type=int, help='val images (per class for cls)')
    parser.add_argument('--img-size', type=int, help='image side')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    sizes = {k: v for k, v in (('img_size', args.img_size),) if v is not None}
    if args.kind == 'cls':
        counts = {k: v for k, v in (('train_per_class', args.num_train),
                                    ('val_per_class', args.num_val)) if v is not None}
        classes = make_toy_classification(args.out, args.num_classes, seed=args.seed,
                                          **counts, **sizes)
        print(f'wrote {len(classes)} classes ({", ".join(classes)}) to {args.out}')
        return
    counts = {k: v for k, v in (('num_train', args.num_train), ('num_val', args.num_val))
              if v is not None}
    make = make_toy_ade20k if args.kind == 'ade' else make_toy_coco
    make(args.out, seed=args.seed, **counts, **sizes)
    print(f'wrote the toy {args.kind} dataset to {args.out}')


if __name__ == '__main__':
    main()
