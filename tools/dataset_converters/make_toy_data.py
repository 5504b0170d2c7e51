"""Write the built-in toy datasets (real on-disk layouts, procedurally drawn).

    python tools/dataset_converters/make_toy_data.py cls data/toy_cls
"""
import argparse

from mmshufflemamba.datasets import make_toy_classification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('kind', choices=['cls'], help='cls: ImageNet-layout classification')
    parser.add_argument('out', help='output folder')
    parser.add_argument('--num-classes', type=int, default=4)
    parser.add_argument('--train-per-class', type=int, default=32)
    parser.add_argument('--val-per-class', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    classes = make_toy_classification(args.out, args.num_classes, args.train_per_class,
                                      args.val_per_class, args.img_size, args.seed)
    print(f'wrote {len(classes)} classes ({", ".join(classes)}) to {args.out}')


if __name__ == '__main__':
    main()
