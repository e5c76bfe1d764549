"""Data sets: the registry (``benchmarks.data.datasets.registry``) and the built-in entries, one
module each; importing this package registers them. A new data set is one module with
``@register`` (here, or a plugin module given to ``--plugins``)."""

from benchmarks.data.datasets import fashion_mnist, imagefolder, mnist5k, shards  # noqa: F401  (built-ins register)
from benchmarks.data.datasets.registry import (
    REGISTRY,
    ArrayDataSet,
    DataSet,
    ImageSource,
    dataset_names,
    get_dataset,
    register,
)

__all__ = ["ArrayDataSet", "DataSet", "ImageSource", "REGISTRY", "dataset_names", "get_dataset", "register"]
