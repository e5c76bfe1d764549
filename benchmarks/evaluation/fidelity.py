"""Image-set metrics through torch-fidelity: FID, KID, precision/recall and Inception Score.

Inputs are uint8 images (C, H, W): a tensor / array (N, C, H, W) or a Dataset yielding images or
(image, label) pairs. Three pieces:

- ``ExtractorSpec``: which torch-fidelity feature extractor (by registry name) and which weights
  file, built by a registered extractor (``benchmarks.evaluation.extractors``; ``get_extractor``):
  ``mnist_extractor()`` is the offline default (``benchmarks.evaluation.mnist_cnn``, trained once
  and cached); ``inception_extractor()`` is the standard Inception from a local weights file
  (nothing downloads at run time).
- ``Reference``: the real side, computed once and cached. ``reference_from_images`` extracts
  features of a reference image set and caches them in ``cache_dir("refstats")`` under a content
  hash of the images and of the extractor weights, so a changed reference set or extractor never
  reuses stale statistics (torch-fidelity's own cache is keyed by name only and is not used).
  ``reference_from_npz`` reads an ADM-style reference batch (``mu``, ``sigma`` and optionally the
  images ``arr_0``).
- ``compute_metrics``: features of the generated set (torch-fidelity's extraction loop and
  extractor classes), then the registered metrics (``benchmarks.evaluation.metrics``), the
  built-ins torch-fidelity's own metric functions with its defaults:

  FID  = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2})   (Gaussian fits of the features)
  KID  = unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, mean/std over 100 random subsets
  precision = fraction of generated features inside the union of real k-NN balls (k = 3);
  recall    = fraction of real features inside the union of generated k-NN balls
  IS   = exp E_x KL(p(y|x) || p(y)), mean/std over 10 splits of the generated set
  class accuracy = (1/N) sum_i [argmax_c logits_c(x_i) == y_i] for images x_i generated for label
                   y_i, when the extractor's logits are the dataset's classes (``class_layer``)

  The numbers equal ``torch_fidelity.calculate_metrics(input1=generated, input2=reference images,
  fid=kid=prc=isc=True)`` with the same extractor (tested); doing the two steps here lets one
  extraction of the generated set serve references given only as statistics (ADM's ``mu``/``sigma``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from benchmarks.core import logs
from benchmarks.data.images import ArrayImages, ImageFolder, to_model_range, to_uint8
from benchmarks.evaluation import metrics as metric_registry
from benchmarks.evaluation.extractors import ExtractorSpec, get_feature_extractor
from benchmarks.evaluation.extractors.inception import INCEPTION, INCEPTION_ENV, INCEPTION_FILE, inception_extractor  # noqa: F401
from benchmarks.evaluation.extractors.mnist_cnn import mnist_extractor  # noqa: F401
from benchmarks.evaluation.metrics import class_accuracy  # noqa: F401
from benchmarks.storage.atomic import built_once, save_with
from benchmarks.storage.cache import cache_dir, content_hash

CLASS_ACCURACY_NOTE = (
    "class accuracy needs an extractor whose logits are the dataset's classes (its class_layer); "
    f"{INCEPTION}'s 1008 logits follow TensorFlow's 2015 ImageNet label map, not the "
    "dataset's class indices"
)
MIN_IMAGES = 10  # IS uses 10 splits; KID and the k-NN balls of precision/recall need a few samples
STATS_ONLY_NOTE = (
    "stats-only reference (mu, sigma): FID and IS are computed; KID and precision/recall "
    "need reference images and are NaN"
)


def get_extractor(name: str, weights_path: str | os.PathLike | None = None) -> ExtractorSpec:
    """A registered extractor by name (``benchmarks.evaluation.extractors``), from ``weights_path``
    if given, else its default (e.g. ``mnist-cnn`` trained once and cached)."""
    try:
        entry = get_feature_extractor(name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return entry.spec(weights=weights_path)


# ---------------------------------------------------------------------------------------------
# Image sets and features


class ImageSet(Dataset):
    """uint8 images (C, H, W) from a tensor / array (N, C, H, W) or from a Dataset yielding images
    or (image, label, ...) tuples; torch-fidelity's input form. Grey images are repeated to
    ``channels`` if that is 3."""

    def __init__(self, source, channels: int | None = None):
        if isinstance(source, np.ndarray):
            source = torch.from_numpy(source)
        if isinstance(source, Tensor) and (source.dim() != 4 or source.dtype != torch.uint8):
            raise ValueError(f"images must be uint8 (N, C, H, W), got {source.dtype} {tuple(source.shape)}")
        self.source, self.channels = source, channels
        self.in_memory = isinstance(source, (Tensor, ArrayImages))
        if len(self) == 0:
            raise ValueError("the image set is empty")
        first = self[0]
        if first.dtype != torch.uint8 or first.dim() != 3:
            raise ValueError(f"images must be uint8 (C, H, W) tensors, got {first.dtype} {tuple(first.shape)}")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Tensor:
        item = self.source[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(image, Tensor):
            image = torch.as_tensor(np.asarray(image))
        if self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        elif self.channels is not None and image.shape[0] != self.channels:
            raise ValueError(f"image {i} has {image.shape[0]} channels; the extractor takes {self.channels}")
        return image


def images_fingerprint(images) -> str:
    """A content hash of an image set (labels excluded).

    For an ``ImageFolder`` the hash covers relative paths, file sizes, modification times, the
    crop size and colour mode (reading every file would mean decoding it); otherwise it covers
    every image's shape and pixels, so the same pixels give the same hash from a tensor or a Dataset.
    """
    if isinstance(images, ImageFolder):
        files = [
            (str(p.relative_to(images.root)), p.stat().st_size, p.stat().st_mtime_ns, label)
            for p, label in images.samples
        ]
        return content_hash("image-folder", images.size, images.mode, files)
    h = hashlib.sha256()
    for image in ImageSet(images):
        h.update(repr(tuple(image.shape)).encode())
        h.update(image.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _device_context(device: str | torch.device):
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def extract_features(
    images,
    extractor: ExtractorSpec,
    *,
    layers: list[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Features {layer: (N, D) float32 on the CPU} of uint8 images, by torch-fidelity's extractor
    ``extractor.name`` and its batch loop (a DataLoader; worker processes unless in memory).
    ``layers`` defaults to every layer the metrics use."""
    dataset = ImageSet(images, extractor.channels)
    cuda = torch.device(device).type == "cuda"
    with _device_context(device):
        fe = create_feature_extractor(
            extractor.name,
            layers or extractor.layers,
            cuda=cuda,
            feature_extractor_weights_path=extractor.weights_path,
            verbose=False,  # its "Creating feature extractor ..." print is no progress bar
        )
        # verbose: torch-fidelity's "Processing samples" bar and line, never in a --no-progress run
        verbose = progress and logs.show_progress()
        return get_featuresdict_from_dataset(dataset, fe, batch_size, cuda, dataset.in_memory, verbose)


# ---------------------------------------------------------------------------------------------
# Reference statistics


@dataclass
class Reference:
    """The real side of the metrics.

    ``id``: what results record, e.g. ``mnist5k-<hash of images>`` or ``adm-npz:<file>-<hash of
    stats>``. ``extractor``: the ``ExtractorSpec.id`` the features belong to, or, for a stats-only
    npz, the extractor name the statistics were made with. ``features``: {layer: (N, D)} or None
    (stats only). ``fid_stats``: {"mu": (D,), "sigma": (D, D)} for FID.
    """

    id: str
    extractor: str
    fid_stats: dict[str, np.ndarray]
    features: dict[str, Tensor] | None = None
    note: str = ""
    num_images: int | None = None

    def check_extractor(self, extractor: ExtractorSpec) -> None:
        if self.extractor not in (extractor.id, extractor.name):
            raise ValueError(
                f"reference {self.id} was computed with feature extractor {self.extractor}, not {extractor.id}"
            )


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"reference name {name!r} must be letters, digits, '_', '.' or '-'")
    return name


def reference_from_images(
    images,
    extractor: ExtractorSpec,
    name_hint: str = "ref",
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 64,
) -> Reference:
    """Reference features and FID statistics of uint8 images, computed once and cached as
    ``<cache>/refstats/<name_hint>-<images hash>-<extractor>-<weights hash>.npz``.

    The id is ``<name_hint>-<images hash>``; a different image set gives a different hash and a
    fresh computation."""
    rid = f"{_check_name(name_hint)}-{images_fingerprint(images)}"
    path = cache_dir("refstats") / f"{rid}-{extractor.name}-{extractor.key}.npz"
    with built_once(path, path.exists) as from_cache:
        what = f"reference statistics: {rid} ({len(images)} images, {extractor.name})"
        if from_cache:
            logs.reused(what, f"statistics in the cache ({path.name})", part="eval")
        else:
            with logs.stage(what, part="eval"):
                feats = extract_features(
                    images,
                    extractor,
                    layers=extractor.reference_layers,
                    device=device,
                    progress=progress,
                    batch_size=batch_size,
                )
            stats = fid_features_to_statistics(feats[extractor.layer("fid")])
            arrays = {f"features/{k}": v.numpy() for k, v in feats.items()} | {f"fid/{k}": v for k, v in stats.items()}
            save_with(lambda tmp: _savez(tmp, arrays), path)
        with np.load(path) as data:
            feats = {k.split("/", 1)[1]: torch.from_numpy(data[k]) for k in data.files if k.startswith("features/")}
            stats = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("fid/")}
    return Reference(rid, extractor.id, stats, feats, num_images=len(next(iter(feats.values()))))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def reference_from_npz(
    path: str | os.PathLike,
    extractor: ExtractorSpec | None = None,
    *,
    stats_extractor: str = INCEPTION,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 64,
) -> Reference:
    """A reference from an ADM-style reference batch ``.npz``: ``mu`` (D,) and ``sigma`` (D, D),
    the Gaussian fit of ``stats_extractor`` features (ADM: Inception pool features, D = 2048), and
    optionally ``arr_0``, the images (N, H, W, C) uint8 (N, C, H, W is accepted too).

    FID always uses the file's ``mu``/``sigma``. With ``arr_0`` and an ``extractor`` (whose name must
    be ``stats_extractor``) the images' features are computed and cached as in
    ``reference_from_images``, so KID and precision/recall are available; otherwise the reference is
    stats-only and those metrics are NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch {path} does not exist")
    with np.load(path) as data:
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise ValueError(f"reference batch {path} lacks key(s) {missing} (has {data.files})")
        mu, sigma = data["mu"], data["sigma"]
        has_images = "arr_0" in data.files
        images = data["arr_0"] if extractor is not None and has_images else None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"reference batch {path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    rid = f"adm-npz:{path.name}-{content_hash(mu.tobytes(), sigma.tobytes())}"
    stats = {"mu": mu, "sigma": sigma}
    if extractor is not None and extractor.name != stats_extractor:
        raise ValueError(
            f"reference batch {path} holds {stats_extractor} statistics; extractor {extractor.id} does not match"
        )
    if images is None:
        unused = " (the file has images arr_0: pass an extractor to use them)" if has_images else ""
        return Reference(rid, stats_extractor, stats, note=STATS_ONLY_NOTE + unused)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"reference batch {path}: arr_0 must be uint8 images (N, H, W, C), got {images.dtype} {images.shape}"
        )
    if images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # a strided view, not a copy
    name = "npz-" + re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    ref = reference_from_images(images, extractor, name, device=device, progress=progress, batch_size=batch_size)
    return Reference(rid, extractor.id, stats, ref.features, num_images=ref.num_images)


def save_reference_npz(reference: Reference, path: str | os.PathLike) -> None:
    """Write a reference's FID statistics as an ADM-style ``.npz`` (``mu``, ``sigma``)."""
    save_with(lambda tmp: _savez(tmp, dict(reference.fid_stats)), path)


# ---------------------------------------------------------------------------------------------
# Metrics


def metrics_from_features(
    features: dict[str, Tensor],
    reference: Reference,
    extractor: ExtractorSpec,
    *,
    labels=None,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULTS["kid_subsets"],
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """Metrics of generated-set features (from ``extract_features``) against ``reference``.

    Returns {column: value} of the registered metrics ``metrics`` (None: all;
    ``benchmarks.evaluation.metrics``), the built-ins' ``fid``, ``kid_mean``, ``kid_std``,
    ``precision``, ``recall``, ``isc``, ``isc_std``, ``class_accuracy``; KID and precision/recall
    are NaN for a stats-only reference. KID averages ``kid_subsets`` (100) random subsets of
    ``kid_subset_size`` (default min(1000, N_generated, N_reference)) from each side; if the
    subsets are both whole sets they are all the same set, and one is computed. ``labels`` (N,):
    the class each image was generated for; class accuracy is computed from the same features
    (the extractor's class logits, ``ExtractorSpec.class_layer``) and is NaN without labels or
    for an extractor without class logits (``CLASS_ACCURACY_NOTE``).
    """
    reference.check_extractor(extractor)
    fid_layer = extractor.layer("fid")
    n_gen = len(features[fid_layer])
    if n_gen < MIN_IMAGES:
        raise ValueError(f"at least {MIN_IMAGES} generated images are needed, got {n_gen}")
    ref_mu = reference.fid_stats["mu"]
    if features[fid_layer].shape[1] != ref_mu.shape[0]:
        raise ValueError(
            f"reference {reference.id} has {ref_mu.shape[0]}-d statistics; extractor {extractor.id} "
            f"gives {features[fid_layer].shape[1]}-d features"
        )
    inputs = metric_registry.MetricInputs(features, extractor, reference, labels, kid_subset_size, kid_subsets)
    return metric_registry.evaluate(inputs, metrics)


def compute_metrics(
    generated,
    reference: Reference,
    extractor: ExtractorSpec,
    *,
    labels=None,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULTS["kid_subsets"],
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 64,
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """FID, KID, precision/recall and IS of uint8 generated images (a (N, C, H, W) tensor or a
    Dataset of (C, H, W)) against ``reference``, and the class accuracy of images generated for
    ``labels`` (N,); see ``metrics_from_features``. ``device`` "cuda"
    runs the extractor on the GPU; ``progress`` shows torch-fidelity's progress bars."""
    reference.check_extractor(extractor)
    if reference.features is None:
        warnings.warn(f"reference {reference.id}: {reference.note}", stacklevel=2)
    features = extract_features(generated, extractor, device=device, progress=progress, batch_size=batch_size)
    return metrics_from_features(
        features,
        reference,
        extractor,
        labels=labels,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        metrics=metrics,
    )


@torch.no_grad()
def reconstruct(tokenizer, images, *, batch_size: int = 64, device: str | torch.device = "cpu") -> tuple[Tensor, float]:
    """decode(encode(x)) of uint8 images: the reconstructions, uint8 (N, C, H, W) on the CPU, and
    their mean squared error in uint8 units over all pixels. The tokenizer takes and gives [-1, 1]
    and must already be on ``device``."""
    out, sq_err, count = [], 0.0, 0
    for batch in DataLoader(ImageSet(images), batch_size=batch_size):
        rec = tokenizer.decode(tokenizer.encode(to_model_range(batch.to(device))))
        if rec.shape != batch.shape:
            raise ValueError(f"tokenizer reconstructs {tuple(batch.shape)} images as {tuple(rec.shape)}")
        rec = to_uint8(rec).cpu()
        sq_err += (rec.double() - batch.double()).pow(2).sum().item()
        count += batch.numel()
        out.append(rec)
    return torch.cat(out), sq_err / count


def reconstruction_metrics(
    tokenizer,
    images,
    reference: Reference,
    extractor: ExtractorSpec,
    *,
    labels=None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULTS["kid_subsets"],
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """The tokenizer floor: metrics of the reconstructions decode(encode(x)) of the reference images
    against ``reference`` (a generator over the tokenizer's codes cannot be expected to beat it), plus
    ``psnr`` = 10 log10(255^2 / MSE) over all pixels of the uint8 reconstructions. With the images'
    ``labels``, ``class_accuracy`` is the reconstructions' (the ceiling for generated images)."""
    recon, mse = reconstruct(tokenizer, images, batch_size=batch_size, device=device)
    out = compute_metrics(
        recon,
        reference,
        extractor,
        labels=labels,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        device=device,
        progress=progress,
        batch_size=batch_size,
        metrics=metrics,
    )
    out["psnr"] = 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf
    return out
