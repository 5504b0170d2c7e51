"""The dataset config inside the wrappers (RepeatDataset, ClassBalancedDataset, ...):
written once for the runner's path checks, the test options and the demo's class names."""
from typing import Iterator

__all__ = ['nested_datasets', 'innermost_dataset']


def nested_datasets(dataset) -> Iterator:
    """A dataset config and the ones its wrappers (RepeatDataset, ...) nest, outermost
    first; nothing for None."""
    while dataset:
        yield dataset
        dataset = dataset.get('dataset')


def innermost_dataset(dataset):
    """The real dataset inside a dataset config's wrappers."""
    *_, innermost = nested_datasets(dataset)
    return innermost
