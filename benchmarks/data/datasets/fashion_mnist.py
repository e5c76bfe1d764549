"""``fashion-mnist``: Zalando's Fashion-MNIST, 10 clothing classes, grey 28x28 zero-padded to 32x32.

Read from the publisher's four idx files in ``data.path`` (default: the folder of Debian's
``dataset-fashion-mnist`` package). Idx layout, big-endian: magic (2051 images, 2049 labels),
n, then (28, 28) for images, then n*28*28 (or n) uint8. Trains on the 60,000 train images; the
evaluation reference (FID statistics) is the 10,000 test images, the usual protocol. Evaluated
with the ``fashion-cnn`` classifier.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from benchmarks.core.config import ConfigError, DataConfig
from benchmarks.data.datasets.registry import ArrayDataSet, register

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SIDE, PAD = 28, 2
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
FILES = [name for images, labels, _ in SPLITS.values() for name in (images, labels)]


@register
class FashionMNIST(ArrayDataSet):
    name = "fashion-mnist"
    path = f"a folder with {', '.join(FILES)}"
    default_path = DEFAULT_PATH
    image_size = SIDE + 2 * PAD
    num_classes = len(CLASSES)
    feature_extractor = "fashion-cnn"

    def check(self, data: DataConfig) -> None:
        super().check(data)
        folder = Path(data.path or DEFAULT_PATH)
        for images, labels, n in SPLITS.values():
            check_idx(folder / images, IMAGES_MAGIC, (n, SIDE, SIDE))
            check_idx(folder / labels, LABELS_MAGIC, (n,))

    def arrays(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        return load_split(data.path or DEFAULT_PATH, "train")

    def reference_arrays(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        return load_split(data.path or DEFAULT_PATH, "test")


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 1, 32, 32): 28x28 zero-padded by 2 on every side, labels int64 (n,))."""
    images_file, labels_file, n = SPLITS[split]
    images = read_idx(Path(folder) / images_file, IMAGES_MAGIC, (n, SIDE, SIDE))
    labels = read_idx(Path(folder) / labels_file, LABELS_MAGIC, (n,)).astype(np.int64)
    if labels.max() >= len(CLASSES):
        raise ConfigError(_problem(Path(folder) / labels_file, f"has label {labels.max()} (classes are 0-9)"))
    return np.pad(images[:, None], ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD))), labels


def read_idx(file: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of a gzipped idx file, checked against ``magic`` and ``shape``."""
    check_idx(file, magic, shape)
    try:
        raw = gzip.decompress(file.read_bytes())
    except (OSError, EOFError) as err:
        raise ConfigError(_problem(file, f"cannot be decompressed ({err})")) from None
    header = 4 * (1 + len(shape))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def check_idx(file: Path, magic: int, shape: tuple[int, ...]) -> None:
    """Header and length of a gzipped idx file, without decompressing it: the header is the
    first 4 (1 + len(shape)) bytes, and gzip's trailer holds the uncompressed size mod 2^32."""
    if not file.is_file():
        raise ConfigError(_problem(file, "does not exist"))
    header = 4 * (1 + len(shape))
    try:
        with gzip.open(file, "rb") as f:
            head = f.read(header)
        with open(file, "rb") as f:
            f.seek(-4, 2)
            (stored,) = struct.unpack("<I", f.read(4))
    except (OSError, EOFError) as err:
        raise ConfigError(_problem(file, f"is not a readable gzip file ({err})")) from None
    if len(head) < header:
        raise ConfigError(_problem(file, f"is truncated ({len(head)}-byte header, expected {header})"))
    got_magic, *got_shape = struct.unpack(f">{1 + len(shape)}I", head)
    if got_magic != magic:
        raise ConfigError(_problem(file, f"has magic number {got_magic}, expected {magic}"))
    if tuple(got_shape) != shape:
        raise ConfigError(_problem(file, f"has shape {tuple(got_shape)}, expected {shape}"))
    size = header + int(np.prod(shape))
    if stored != size % 2**32:
        raise ConfigError(_problem(file, f"is truncated ({stored} bytes uncompressed, expected {size})"))


def _problem(file: Path, what: str) -> str:
    return (
        f"data.path: Fashion-MNIST file {file} {what}. Install Debian's {DEBIAN_PACKAGE} package "
        f"(apt-get install -y {DEBIAN_PACKAGE}, into {DEFAULT_PATH}) or set data.path to a folder "
        f"holding the publisher's original files {', '.join(FILES)}"
    )
