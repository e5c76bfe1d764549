"""``imagefolder``: the user's images under ``data.path`` = ROOT/<class>/<image>.

Classes are the sorted subfolder names; images are centre-cropped to ``data.image_size`` (ADM
preprocessing, ``benchmarks.data.images.ImageFolder``) and read grey if every file is
single-channel and the tokenizer does not ask for RGB. Content id: a hash of the file list
(relative paths, sizes, modification times) and the preprocessing, so a changed folder is a new
data set and never reuses a stale cache.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from benchmarks.core.config import ConfigError, DataConfig
from benchmarks.data.datasets.registry import DataSet, ImageSource, register
from benchmarks.data.images import IMAGE_SUFFIXES, ImageFolder
from benchmarks.storage.cache import content_hash

GREY_MODES = ("1", "L", "I", "I;16", "F")


@register
class ImageFolderDataSet(DataSet):
    name = "imagefolder"
    path = "ROOT/<class>/<image>"

    def check(self, data: DataConfig) -> None:
        super().check(data)
        check_image_folder(Path(data.path))

    def load(self, data: DataConfig, channels: int | None) -> ImageSource:
        if not data.path:
            raise ValueError(f"data.path is required for data.dataset {self.name!r} ({self.path})")
        if channels is None:
            mode = folder_mode(ImageFolder(data.path, data.image_size).samples)
        else:
            mode = "L" if channels == 1 else "RGB"
        folder = ImageFolder(data.path, data.image_size, mode)
        return ImageSource(folder, folder.num_classes, folder_id(folder))


def check_image_folder(root: Path) -> None:
    """ROOT/<class>/<image>: the folder exists, has class subfolders and at least one image (the
    listing stops at the first, so an ImageNet-sized folder costs no full walk here)."""
    if not root.is_dir():
        raise ConfigError(f"data.path: image folder {root} does not exist")
    classes = [p for p in root.iterdir() if p.is_dir()]
    if not classes:
        raise ConfigError(f"data.path: image folder {root} has no class subfolders (expected ROOT/<class>/<image>)")
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for folder in classes for p in folder.rglob("*")):
        raise ConfigError(f"data.path: image folder {root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")


def folder_mode(samples: list[tuple[Path, int]]) -> str:
    """ "L" if every image in the folder is single-channel (grey or 1-bit), else "RGB"."""
    for file, _ in samples:
        with Image.open(file) as img:
            if img.mode not in GREY_MODES:
                return "RGB"
    return "L"


def folder_id(folder: ImageFolder) -> str:
    """Content hash of the file list (relative paths, sizes, mtimes) and the preprocessing."""
    files = []
    for file, label in folder.samples:
        st = file.stat()
        files.append([str(file.relative_to(folder.root)), label, st.st_size, st.st_mtime_ns])
    return "imagefolder-" + content_hash(files, folder.size, folder.mode)
