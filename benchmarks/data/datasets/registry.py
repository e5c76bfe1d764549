"""The data-set registry: ``@register`` a ``DataSet`` under its ``name`` (the value of ``data.dataset``).

A data set says how the suite reads it: ``load`` gives its images and labels as an ``ImageSource``
(uint8 (C, H, W) images, int labels, the class count and a content id for cache keys), or, for
pre-encoded code shards (``encoded = True``), ``open_shards`` gives the shards; ``reference`` the
evaluation's reference images if not the training images (e.g. a test split). ``check`` is its
preflight (files exist; metadata reads only, before anything is written), ``num_classes`` what
``--dry-run`` needs without reading data, and ``feature_extractor`` what ``eval.feature_extractor:
auto`` evaluates it with. ``ArrayDataSet`` is the base for data sets held in memory as arrays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from benchmarks.core.config import ConfigError, DataConfig
from benchmarks.core.registry import Registry
from benchmarks.data.images import ArrayImages
from benchmarks.data.shards import CodeShards
from benchmarks.storage.cache import content_hash


@dataclass
class ImageSource:
    """A data set's images as the suite reads them.

    images: items (uint8 (C, H, W) tensor, int label in [0, num_classes)), in a fixed order.
    id: a content id, e.g. ``mnist5k-1ch-<hash>``; it changes whenever the images, the labels or
    the preprocessing change, and keys the cached tokenizer and code shards.
    """

    images: Dataset
    num_classes: int
    id: str


class DataSet(ABC):
    """A registered data set. Subclasses set ``name`` and implement ``load`` (or ``open_shards``)."""

    name: str
    path: str | None = None
    """What ``data.path`` holds, for messages (e.g. ``ROOT/<class>/<image>``); None: no path is read."""
    default_path: str | None = None
    """Where the files are when ``data.path`` is unset (e.g. a Debian package's folder); None: required."""
    num_classes: int | None = None
    """The class count if fixed (``--dry-run`` reads no data); None: ``data.num_classes``."""
    feature_extractor: str = "inception-v3-compat"
    """The feature extractor ``eval.feature_extractor: auto`` picks for this data set."""
    encoded: bool = False
    """Pre-encoded code shards, not images: ``open_shards`` instead of ``load``."""

    def check(self, data: DataConfig) -> None:
        """Preflight: raise ConfigError naming the key, the file and the fix for the first missing
        input. Reads metadata only (milliseconds). Default: ``data.path`` is given if ``path`` is set
        and there is no ``default_path``."""
        if self.path is not None and self.default_path is None and not data.path:
            raise ConfigError(
                f"data.path is required for data.dataset={self.name!r} ({self.path}): add --set data.path=..."
            )

    def load(self, data: DataConfig, channels: int | None) -> ImageSource:
        """The images for a tokenizer taking ``channels`` (1 or 3; None: the data's own)."""
        raise NotImplementedError(f"data set {self.name!r} has no images (encoded = {self.encoded})")

    def reference(self, data: DataConfig, channels: int | None) -> Dataset | None:
        """The evaluation's reference images (FID statistics) when ``data.reference`` is unset, for
        a tokenizer taking ``channels``. Default None: the training images (``load``)."""
        return None

    def open_shards(self, data: DataConfig) -> CodeShards:
        """The code shards of a pre-encoded data set (``encoded = True``)."""
        raise NotImplementedError(f"data set {self.name!r} is not pre-encoded")

    def dry_run_classes(self, data: DataConfig) -> int | None:
        """The class count ``--dry-run`` plans with: ``data.num_classes``, else ``num_classes``."""
        return data.num_classes or self.num_classes


class ArrayDataSet(DataSet):
    """A data set held in memory: ``arrays`` gives uint8 images (N, C, H, W) with H = W =
    ``image_size`` and int labels (N,). Grey images are repeated to 3 channels for an RGB
    tokenizer. Content id: ``<name>-<C>ch-<hash of the pixels and labels>``."""

    image_size: int

    @abstractmethod
    def arrays(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N, C, image_size, image_size), labels int (N,))."""

    def reference_arrays(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray] | None:
        """Reference images and labels like ``arrays`` (e.g. a test split); None: the training images."""
        return None

    def check(self, data: DataConfig) -> None:
        super().check(data)
        if data.image_size != self.image_size:
            raise ConfigError(
                f"data.image_size must be {self.image_size} for data.dataset={self.name!r}, got {data.image_size}"
            )

    def load(self, data: DataConfig, channels: int | None) -> ImageSource:
        if data.image_size != self.image_size:
            raise ValueError(f"data.image_size must be {self.image_size} for {self.name}, got {data.image_size}")
        images, labels = self.arrays(data)
        images = self._with_channels(images, channels)
        data_id = f"{self.name}-{images.shape[1]}ch-" + content_hash(images.tobytes(), labels.tobytes())
        return ImageSource(ArrayImages(images, labels), self.num_classes or int(labels.max()) + 1, data_id)

    def reference(self, data: DataConfig, channels: int | None) -> Dataset | None:
        arrays = self.reference_arrays(data)
        return None if arrays is None else ArrayImages(self._with_channels(arrays[0], channels), arrays[1])

    def _with_channels(self, images: np.ndarray, channels: int | None) -> np.ndarray:
        """Checked uint8 (N, C, S, S) images, grey repeated to ``channels`` (None: unchanged)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2:] != (self.image_size,) * 2:
            raise ValueError(
                f"data set {self.name!r} gave {images.dtype} images {images.shape}, expected uint8 "
                f"(N, C, {self.image_size}, {self.image_size})"
            )
        if channels not in (None, images.shape[1]):
            if images.shape[1] != 1:
                raise ValueError(
                    f"data set {self.name!r} has {images.shape[1]}-channel images; the tokenizer takes {channels}"
                )
            images = np.repeat(images, channels, axis=1)
        return images


REGISTRY: Registry[DataSet] = Registry("data set", "data.dataset")
register = REGISTRY.register
"""Class decorator (or call on an instance) adding a data set under its ``name``."""


def get_dataset(name: str) -> DataSet:
    return REGISTRY.get(name)


def dataset_names() -> list[str]:
    return REGISTRY.names()
