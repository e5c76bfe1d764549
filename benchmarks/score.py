"""Score images the suite did not make (or exported) with the suite's extractor and reference.

    python -m benchmarks.score purr-50k.npz --run runs/in256              # the run's extractor and reference
    python -m benchmarks.score samples/ --extractor inception-v3-compat --reference VIRTUAL_imagenet256_labeled.npz
    python -m benchmarks.score --run runs/in256 --export-reference in256-ref.npz   # ADM mu/sigma of the reference

Input: an ADM-format ``.npz`` (``arr_0`` uint8 (N, H, W, C); labels in ``arr_1`` if present) or a
folder of images (``<folder>/<label>/<image>`` gives labels, the integer subfolder names or else
their sorted order; images directly in the folder have none). Images are taken in file-name
order (``benchmarks.sample`` names them by sample index), so an export scores exactly as the
evaluation cell it reproduces. Grey images stored with three equal channels (as ADM batches
store them) are read back as grey for a one-channel extractor.

With ``--run`` the extractor and reference are the run's (``eval.feature_extractor``,
``data.reference`` or the training images), so the ``feature_extractor`` and ``ref_stats`` ids
printed (and appended with ``--append``) are those of the run's ``metrics.csv``; only rows with
the same two ids are comparable. Otherwise ``--extractor`` and ``--reference`` (an ADM reference
batch ``.npz`` or an image folder) name them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.core.cli import OneLineParser
from benchmarks.core.config import from_dict
from benchmarks.data import datasets, tokenizers  # noqa: F401  (register the built-ins a run's config names)
from benchmarks.evaluation import fidelity
from benchmarks.evaluation.extractors import feature_extractor_names
from benchmarks.evaluation.metrics import metric_columns
from benchmarks.storage.manifest import read_manifest
from benchmarks.storage.results import read_rows, upsert_row
from benchmarks.storage.run_dir import MANIFEST
from benchmarks.storage.writable import unwritable_reason

SCORE_LEAD = ["source", "sha256", "n_samples", "feature_extractor", "ref_stats"]
"""The columns of a score row before its metric columns (``benchmarks.evaluation.metrics.metric_columns``)."""
SCORE_KEY = ["sha256", "feature_extractor", "ref_stats"]
"""A row's identity: the scored content (not its path, which a new export may reuse) and the metric's ids."""
VALID_INPUT = "an ADM-format .npz (arr_0 uint8 (N, H, W, 1 or 3), arr_1 labels) or a folder of image files"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UsageError(ValueError):
    """Bad arguments or input: the message names the option or file."""


def load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, C, H, W) and labels (N,) or None from an ADM-format batch."""
    try:
        with np.load(path) as data:
            if "arr_0" not in data.files:
                raise UsageError(f"{path} has no images (key arr_0); keys: {data.files}")
            images, labels = data["arr_0"], data["arr_1"] if "arr_1" in data.files else None
    except UsageError:
        raise
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise UsageError(f"{path} cannot be read as an .npz ({e}); expected {VALID_INPUT}") from None
        what = "pickled objects, or not an .npz at all"
        raise UsageError(f"{path} holds no image arrays ({what}); expected {VALID_INPUT}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path} cannot be read as an .npz ({e}); expected {VALID_INPUT}") from None
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise UsageError(f"{path}: arr_0 must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    if labels is not None and labels.shape != (len(images),):
        raise UsageError(f"{path}: arr_1 must hold one label per image, got shape {labels.shape}")
    return (
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
    )


def load_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, C, H, W) of a folder (file-name order) and labels from class subfolders."""
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: (p.name, str(p)))
    if not files:
        raise UsageError(f"{root} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    labelled = "." not in classes
    index = (
        {c: int(c) for c in classes}
        if labelled and all(c.isdigit() for c in classes)
        else {c: i for i, c in enumerate(classes)}
    )
    arrays = [read_image(path) for path in files]
    if len({a.shape for a in arrays}) > 1:
        raise UsageError(f"{root}: images differ in size or channels ({sorted({a.shape for a in arrays})[:3]} ...)")
    labels = torch.tensor([index[p.parent.relative_to(root).as_posix()] for p in files]) if labelled else None
    return torch.from_numpy(np.stack(arrays)), labels


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (C, H, W); an unreadable file is a usage error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16") else "RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise UsageError(f"{path} cannot be read as an image ({e}); replace or delete it") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def content_hash(path: Path) -> str:
    """sha256 of an .npz's bytes, or of a folder's image files (relative names and bytes, in name order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):  # noqa: B023 (called at once)
                digest.update(chunk)
    return digest.hexdigest()


def check_append(path: Path) -> None:
    """Refuse an ``--append`` target that cannot take score rows, before any scoring."""
    reason = unwritable_reason(path)
    if reason is None and path.exists() and not os.access(path, os.W_OK):
        reason = f"{path} is read-only"
    if reason is not None:
        raise UsageError(f"--append {path} cannot be written ({reason}); choose a writable CSV")
    header, _ = read_rows(path)
    missing = [c for c in ("source", "feature_extractor", "ref_stats") if c not in header]
    if header and missing:
        raise UsageError(
            f"--append {path} is not a scores file of benchmarks.score (no {', '.join(missing)} column; "
            "a run's metrics file is written by benchmarks.run only); append to a CSV of its own, e.g. scores.csv"
        )


def check_image_size(images: torch.Tensor, source: Path, run: Path, image_size: int) -> None:
    """Refuse images of another size than the run's: their features would be compared with the run's reference."""
    height, width = images.shape[-2:]
    if (height, width) != (image_size, image_size):
        raise UsageError(
            f"{source} holds {width}x{height} images, run {run} evaluates {image_size}x{image_size} images; "
            f"export or resize them to {image_size}x{image_size}"
        )


def load_images(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not path.exists():
        raise UsageError(f"{path} does not exist (expected an .npz of samples or a folder of images)")
    return load_npz(path) if path.suffix == ".npz" else load_folder(path)


def for_extractor(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey images stored with three equal channels become one channel, unless the extractor takes three."""
    if channels != 3 and images.shape[1] == 3 and bool((images == images[:, :1]).all()):
        return images[:, :1]
    return images


def run_config(run: Path):
    """The config a run folder was made with."""
    saved = read_manifest(run).get("config") if run.is_dir() else None
    if saved is None:
        raise UsageError(f"--run {run}: no run there (no {MANIFEST} with a config)")
    return from_dict(saved)


def run_extractor_and_reference(run: Path, device: torch.device, progress: bool):
    """The feature extractor and reference of a run's evaluator."""
    from benchmarks.evaluation.evaluator import Evaluator
    from benchmarks.launching.jobs import latents_for

    cfg = run_config(run)
    evaluator = Evaluator(cfg, latents_for(cfg, progress=progress), run, progress=progress)
    return evaluator.extractor(), evaluator.reference(), cfg.eval.kid_subsets


def named_extractor_and_reference(
    name: str, reference: Path, weights: str | None, image_size: int, channels: int, progress: bool
):
    from benchmarks.data.images import ImageFolder

    extractor = fidelity.get_extractor(name, weights)
    if reference.suffix == ".npz":
        return extractor, fidelity.reference_from_npz(reference, extractor, stats_extractor=name, progress=progress)
    folder = ImageFolder(reference, image_size, mode="L" if channels == 1 else "RGB")
    return extractor, fidelity.reference_from_images(folder, extractor, reference.name, progress=progress)


def score(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    extractor,
    reference,
    *,
    kid_subsets: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    """The suite's metrics of ``images``, with class accuracy when ``labels`` (N,) are given and the
    extractor has class logits (``fidelity.metrics_from_features``)."""
    features = fidelity.extract_features(images, extractor, device=device, progress=progress)
    return fidelity.metrics_from_features(features, reference, extractor, labels=labels, kid_subsets=kid_subsets)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m benchmarks.score",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--plugins",
        default="",
        help="comma-separated modules to import first that register extra "
        "feature extractors, metrics, data sets or tokenizers",
    )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", default="")
    for module in filter(None, (m.strip() for m in pre.parse_known_args(argv)[0].plugins.split(","))):
        try:  # before the options that list registered names
            importlib.import_module(module)
        except ImportError as e:
            p.error(f"--plugins: cannot import {module!r}: {e}")
    p.add_argument("path", type=Path, nargs="?", help="an ADM-format .npz of samples, or a folder of images")
    p.add_argument("--run", type=Path, default=None, help="use this run's feature extractor and reference")
    p.add_argument(
        "--extractor", default=None, choices=feature_extractor_names(), help="feature extractor, without --run"
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="without --run: an ADM reference batch .npz (mu, sigma[, arr_0]) or an image folder",
    )
    p.add_argument(
        "--inception-weights", default=None, help=f"local Inception-v3 weights (default: ${fidelity.INCEPTION_ENV})"
    )
    p.add_argument("--kid-subsets", type=int, default=None, help="KID subsets (default: the run's, else 100)")
    p.add_argument("--append", type=Path, default=None, help="append the scores as a row to this CSV")
    p.add_argument(
        "--export-reference",
        type=Path,
        default=None,
        help="write the reference's FID statistics as an ADM-compatible .npz (mu, sigma)",
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    if (args.run is None) == (args.extractor is None or args.reference is None):
        p.error("give --run DIR, or both --extractor and --reference (not both forms)")
    if args.path is None and args.export_reference is None:
        p.error("give a PATH to score, or --export-reference OUT.npz")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if args.append is not None:
            check_append(args.append)
        images, labels = load_images(args.path) if args.path is not None else (None, None)
        if args.run is not None and images is not None:
            check_image_size(images, args.path, args.run, run_config(args.run).data.image_size)
        if args.run is not None:
            extractor, reference, kid_subsets = run_extractor_and_reference(args.run, device, args.progress)
        else:
            size = images.shape[-1] if images is not None else 0
            channels = images.shape[1] if images is not None else 3
            extractor, reference = named_extractor_and_reference(
                args.extractor, args.reference, args.inception_weights, size, channels, args.progress
            )
            kid_subsets = 100
        if args.export_reference is not None:
            fidelity.save_reference_npz(reference, args.export_reference)
            print(f"wrote {args.export_reference} (mu, sigma of {reference.id}; {extractor.id})")
        if images is None:
            return 0
        metrics = score(
            for_extractor(images, extractor.channels),
            labels,
            extractor,
            reference,
            kid_subsets=args.kid_subsets or kid_subsets,
            device=device,
            progress=args.progress,
        )
    except (UsageError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    columns = SCORE_LEAD + metric_columns()
    row = {
        "source": str(args.path),
        "sha256": content_hash(args.path),
        "n_samples": len(images),
        "feature_extractor": extractor.id,
        "ref_stats": reference.id,
        **{k: metrics.get(k, math.nan) for k in metric_columns()},
    }
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.append is not None:
        append_scores(args.append, row, columns)
    return 0


def append_scores(path: Path, row: dict, columns: list[str]) -> None:
    """Write the row into ``path`` keyed by content; say when it replaces a row or the path's
    older content keeps its own row."""
    _, rows = read_rows(path)
    older = [r for r in rows if r.get("source") == row["source"] and r.get("sha256") != row["sha256"]]
    if upsert_row(path, row, columns, SCORE_KEY):
        print(f"replaced the row of the same content (sha256 {row['sha256'][:12]}) in {path}")
    elif older:
        print(f"note: {path} keeps {len(older)} row(s) of {row['source']} with other content (rows keyed by sha256)")


if __name__ == "__main__":
    sys.exit(main())
