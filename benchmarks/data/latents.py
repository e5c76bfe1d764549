"""The latent-space preparation step: a dataset becomes a cached tokenizer plus code shards.

``prepare_latents`` resolves the tokenizer (the suite's VQ-VAE, trained once per dataset and config,
or a pretrained VQ tokenizer loaded from the user's checkpoint), encodes every image once to code
indices in ``<cache>/shards/<key>/`` (``benchmarks.data.shards`` format) and returns everything training
and evaluation need as a ``LatentSpace``. A second call with the same inputs only opens the cache.

Cache keys: the shard folder is ``content_hash(data_id, tokenizer_key)``, where ``data_id`` is a
content hash of the images (MNIST-5k) or of the file list with sizes and modification times
(ImageFolder) plus the preprocessing, and ``tokenizer_key`` is the VQ-VAE's cache key or a hash of the
checkpoint's kind, path, size and modification time.

Shard folders written here carry, besides the ``benchmarks.data.shards`` fields, ``tokenizer`` (kind, key,
codebook geometry), ``data`` (dataset, id, image size) and ``quality`` (recon_mse, perplexity,
codes_used) in ``meta.json``. They are written shard by shard with ``complete: false`` until the
last one, so an interrupted encoding resumes where it stopped.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from backbones.tokenizers.base import Tokenizer
from backbones.tokenizers.vqvae import INFO_FILE, VQVAE, WEIGHTS_FILE, VQVAEConfig, code_usage, train_vqvae
from benchmarks.storage.atomic import built_once, save_json, save_torch
from benchmarks.core import logs
from benchmarks.storage.cache import cache_dir, content_hash
from benchmarks.data.images import MNIST5K_CLASSES, ArrayImages, ImageFolder, load_mnist5k, to_model_range
from benchmarks.data.shards import CodeShards, read_meta, write_meta, write_shard

DATASETS = ("mnist5k", "imagefolder", "shards")
MNIST5K_SIZE = 32
SHARD_SIZE = 50_000
"""Images per shard file."""
RECON_SAMPLE = 64
"""Images a pretrained tokenizer's reconstruction error is measured on."""


@dataclass
class LatentSpace:
    """A dataset in a tokenizer's latent space.

    tokenizer: frozen, on the CPU, in eval mode. shards: the codes (n, h, w) and labels (n,).
    images: the reference images as a dataset of (uint8 (C, H, W) tensor, label), in shard order;
    None when the data source is pre-encoded shards. info: tokenizer kind and cache keys, recon_mse
    (on the [-1, 1] scale, over ``recon_mse_images`` images), perplexity and codes_used of the code
    frequencies, dataset id and counts.
    """

    tokenizer: Tokenizer
    shards: CodeShards
    images: Dataset | None
    num_classes: int
    image_size: int
    info: dict


def prepare_latents(dataset: str, path: str | None, image_size: int, tokenizer_kind: str, ckpt: str | None,
                    vqvae: VQVAEConfig, progress: bool = True, *,
                    device: str | torch.device | None = None) -> LatentSpace:
    """Resolve the tokenizer and the code shards of ``dataset`` (cached; see the module docstring).

    dataset: ``"mnist5k"`` (offline MNIST digits, 32x32), ``"imagefolder"`` (``path`` = ROOT/<class>/<image>,
    centre-cropped to ``image_size``) or ``"shards"`` (``path`` = a folder written by
    ``python -m benchmarks.encode``). tokenizer_kind: ``"vqvae"`` (trained here with ``vqvae``) or a
    pretrained kind read from ``ckpt`` by ``backbones.tokenizers.pretrained.load_tokenizer``. Encoding runs on
    ``device`` (default: CUDA if available, else CPU).
    """
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if tokenizer_kind != "vqvae" and not ckpt:
        raise ValueError(f"tokenizer.ckpt is required for tokenizer kind {tokenizer_kind!r}: "
                         "the path to its checkpoint file on this machine")
    if dataset == "shards":
        return _open_encoded(path, image_size, tokenizer_kind, ckpt)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if tokenizer_kind == "vqvae":
        _check_divisible(image_size, vqvae.downsample, "vqvae.downsample")
        reference, num_classes, data_id = _image_source(dataset, path, image_size, channels=None)
        images = reference.images if isinstance(reference, ArrayImages) else \
            (lambda: np.stack([reference[i][0].numpy() for i in range(len(reference))]))
        tokenizer, tok_info = load_or_train_vqvae(vqvae, images, data_id, progress=progress)
        tok_key, tok_from_cache = tok_info["key"], tok_info["from_cache"]
        quality = {"recon_mse": tok_info["recon_mse"], "recon_mse_images": len(reference)}
    else:
        tokenizer, tok_key = _load_pretrained(tokenizer_kind, ckpt)
        tok_from_cache = False
        _check_divisible(image_size, tokenizer.downsample, f"the downsampling of {tokenizer_kind}")
        reference, num_classes, data_id = _image_source(dataset, path, image_size, channels=tokenizer.in_channels)
        quality = None

    shard_dir = cache_dir("shards", content_hash(data_id, tok_key))
    with built_once(shard_dir / "meta.json", lambda: _complete(shard_dir)) as from_cache:
        if not from_cache:
            if quality is None:
                quality = {"recon_mse": _recon_mse(tokenizer, reference, device), "recon_mse_images":
                           min(RECON_SAMPLE, len(reference))}
            extra = {"tokenizer": {**_tokenizer_meta(tokenizer), "kind": tokenizer_kind, "key": tok_key,
                                   "ckpt": str(ckpt) if ckpt else None},
                     "data": {"dataset": dataset, "id": data_id, "image_size": image_size,
                              "path": str(path) if path else None},
                     "quality": quality}
            with logs.stage(f"tokenizer: encode {len(reference)} images to codes", part="data"):
                encode_to_shards(tokenizer, reference, shard_dir, grid=tokenizer.latent_grid(image_size),
                                 num_classes=num_classes, extra=extra, device=device, progress=progress)
        else:
            logs.reused("tokenizer: encode images to codes", f"codes in the cache ({shard_dir})", part="data")
    shards = CodeShards(shard_dir)
    tokenizer.cpu().eval().requires_grad_(False)
    info = {**_info_from_meta(shards), "from_cache": from_cache, "tokenizer_from_cache": tok_from_cache}
    return LatentSpace(tokenizer, shards, reference, num_classes, image_size, info)


@torch.no_grad()
def encode_to_shards(tokenizer: Tokenizer, dataset: Dataset, out_dir: str | Path, *, grid: tuple[int, int],
                     num_classes: int, extra: dict, device: torch.device, progress: bool = True,
                     batch_size: int = 256, shard_size: int = SHARD_SIZE) -> None:
    """Encode ``dataset`` ((uint8 image, label) items) in order into shard files of ``shard_size`` images.

    ``meta.json`` is rewritten after every shard with ``complete: false`` and finally with
    ``complete: true`` and the code-usage statistics; a rerun skips the shards already listed.
    """
    out_dir = Path(out_dir)
    meta = _read_partial_meta(out_dir)
    shards = list(meta["shards"]) if meta else []
    start = sum(s["count"] for s in shards)
    common = {"grid": grid, "codebook_size": tokenizer.codebook_size, "num_classes": num_classes}
    tokenizer.to(device).eval()
    loader = DataLoader(Subset(dataset, range(start, len(dataset))), batch_size=batch_size, shuffle=False,
                        num_workers=0 if len(dataset) < 4 * SHARD_SIZE else min(8, os.cpu_count() or 1))
    codes_buf: list[np.ndarray] = []
    labels_buf: list[np.ndarray] = []

    def flush(count: int) -> None:
        codes, labels = np.concatenate(codes_buf), np.concatenate(labels_buf)
        shards.append(write_shard(out_dir, len(shards), codes[:count], labels[:count]))
        codes_buf[:] = [codes[count:]]
        labels_buf[:] = [labels[count:]]
        write_meta(out_dir, shards=shards, **common, **extra, complete=False)

    for images, labels in tqdm(loader, desc="encoding", disable=not progress, dynamic_ncols=True):
        codes = tokenizer.encode(to_model_range(images.to(device)))
        if codes.shape[1:] != tuple(grid):
            raise ValueError(f"tokenizer returned a {tuple(codes.shape[1:])} code grid, expected {tuple(grid)}")
        codes_buf.append(codes.cpu().numpy())
        labels_buf.append(np.asarray(labels))
        if sum(len(c) for c in codes_buf) >= shard_size:
            flush(shard_size)
    if sum(len(c) for c in codes_buf):
        flush(sum(len(c) for c in codes_buf))
    counts = np.zeros(tokenizer.codebook_size, dtype=np.int64)
    for entry in shards:
        counts += np.bincount(np.load(out_dir / entry["codes"]).ravel(), minlength=tokenizer.codebook_size)
    perplexity, used = code_usage(counts)
    quality = {**extra.get("quality", {}), "perplexity": perplexity, "codes_used": used}
    write_meta(out_dir, shards=shards, **common, **{**extra, "quality": quality}, complete=True)


def _open_encoded(path: str | None, image_size: int, kind: str, ckpt: str | None) -> LatentSpace:
    """Pre-encoded shards plus the tokenizer that decodes them (``images`` is None)."""
    if not path:
        raise ValueError("data.path is required for data.dataset 'shards' (a folder with meta.json)")
    shards = CodeShards(path)
    recorded = shards.meta.get("tokenizer") or {}
    if recorded.get("kind") not in (None, kind):
        raise ValueError(f"shards at {path} were encoded with tokenizer {recorded['kind']!r}, "
                         f"but tokenizer.kind is {kind!r}")
    if kind != "vqvae":
        tokenizer = _load_pretrained(kind, ckpt)[0]
    elif ckpt:
        tokenizer = VQVAE.load(ckpt)
    else:
        weights = cache_dir("tokenizers") / str(recorded.get("key")) / "vqvae.pt"
        if not recorded.get("key") or not weights.is_file():
            raise FileNotFoundError(f"the VQ-VAE that encoded the shards at {path} is not in the cache ({weights}); "
                                    "set tokenizer.ckpt to its vqvae.pt")
        tokenizer = VQVAE.load(weights)
    if tokenizer.codebook_size != shards.codebook_size:
        raise ValueError(f"shards at {path} have codebook size {shards.codebook_size}, the tokenizer has "
                         f"{tokenizer.codebook_size}")
    if tuple(shards.grid) != tokenizer.latent_grid(image_size):
        raise ValueError(f"shards at {path} have a {tuple(shards.grid)} code grid, but data.image_size={image_size} "
                         f"gives {tokenizer.latent_grid(image_size)} with this tokenizer")
    info = {**_info_from_meta(shards), "tokenizer": kind, "from_cache": True}
    return LatentSpace(tokenizer, shards, None, shards.num_classes, image_size, info)


def _image_source(dataset: str, path: str | None, image_size: int,
                  channels: int | None) -> tuple[Dataset, int, str]:
    """(reference images, number of classes, data id) of an image dataset.

    channels: what the tokenizer takes (1 or 3); None picks it from the data (MNIST: 1; a folder:
    1 if every image is single-channel, else 3). Grey MNIST digits are repeated to 3 channels for
    an RGB tokenizer.
    """
    if dataset == "mnist5k":
        if image_size != MNIST5K_SIZE:
            raise ValueError(f"data.image_size must be {MNIST5K_SIZE} for mnist5k, got {image_size}")
        images, labels = load_mnist5k()
        if channels not in (None, 1):
            images = np.repeat(images, channels, axis=1)
        data_id = f"mnist5k-{images.shape[1]}ch-" + content_hash(images.tobytes(), labels.tobytes())
        return ArrayImages(images, labels), MNIST5K_CLASSES, data_id
    if not path:
        raise ValueError("data.path is required for data.dataset 'imagefolder' (ROOT/<class>/<image>)")
    if channels is None:
        mode = _folder_mode(ImageFolder(path, image_size).samples)
    else:
        mode = "L" if channels == 1 else "RGB"
    folder = ImageFolder(path, image_size, mode)
    return folder, folder.num_classes, _folder_id(folder)


def _load_pretrained(kind: str, ckpt: str) -> tuple[Tokenizer, str]:
    """(frozen tokenizer, cache key from the kind and the checkpoint file's path, size and mtime)."""
    from backbones.tokenizers.pretrained import load_tokenizer, resolve_checkpoint

    tokenizer = load_tokenizer(kind, ckpt).eval().requires_grad_(False)
    file = resolve_checkpoint(kind, ckpt).resolve()
    stat = file.stat()
    return tokenizer, content_hash(kind, str(file), stat.st_size, stat.st_mtime_ns)


def _check_divisible(image_size: int, factor: int, what: str) -> None:
    if image_size % factor:
        raise ValueError(f"data.image_size={image_size} is not divisible by {what}={factor}")


def _folder_mode(samples: list[tuple[Path, int]]) -> str:
    """"L" if every image in the folder is single-channel (grey or 1-bit), else "RGB"."""
    for file, _ in samples:
        with Image.open(file) as img:
            if img.mode not in ("1", "L", "I", "I;16", "F"):
                return "RGB"
    return "L"


def _folder_id(folder: ImageFolder) -> str:
    """Content hash of the file list (relative paths, sizes, mtimes) and the preprocessing."""
    files = []
    for file, label in folder.samples:
        st = file.stat()
        files.append([str(file.relative_to(folder.root)), label, st.st_size, st.st_mtime_ns])
    return "imagefolder-" + content_hash(files, folder.size, folder.mode)


@torch.no_grad()
def _recon_mse(tokenizer: Tokenizer, dataset: Dataset, device: torch.device) -> float:
    """Mean squared error on the [-1, 1] scale of decode(encode(x)) over the first RECON_SAMPLE images."""
    images = torch.stack([dataset[i][0] for i in range(min(RECON_SAMPLE, len(dataset)))])
    x = to_model_range(images.to(device))
    tokenizer.to(device).eval()
    return float((tokenizer.decode(tokenizer.encode(x)) - x).square().mean())


def _read_partial_meta(shard_dir: Path) -> dict | None:
    return read_meta(shard_dir) if (Path(shard_dir) / "meta.json").is_file() else None


def _complete(shard_dir: Path) -> bool:
    return bool((_read_partial_meta(shard_dir) or {}).get("complete"))


def _tokenizer_meta(tokenizer: Tokenizer) -> dict:
    return {"codebook_size": tokenizer.codebook_size, "code_dim": tokenizer.code_dim,
            "downsample": tokenizer.downsample, "in_channels": tokenizer.in_channels,
            "normalized": tokenizer.normalized}


def _info_from_meta(shards: CodeShards) -> dict:
    meta = shards.meta
    tok, data, quality = meta.get("tokenizer") or {}, meta.get("data") or {}, meta.get("quality") or {}
    return {"tokenizer": tok.get("kind"), "tokenizer_key": tok.get("key"), "shard_dir": str(shards.shard_dir),
            "dataset": data.get("dataset"), "data_id": data.get("id"),
            "recon_mse": quality.get("recon_mse"), "recon_mse_images": quality.get("recon_mse_images"),
            "perplexity": quality.get("perplexity"), "codes_used": quality.get("codes_used"),
            "codebook_size": shards.codebook_size, "grid": list(shards.grid),
            "num_images": len(shards), "num_classes": shards.num_classes}


def vqvae_cache_key(cfg: VQVAEConfig, data_id: str) -> str:
    return content_hash(data_id, asdict(cfg))


def load_or_train_vqvae(cfg: VQVAEConfig, images: np.ndarray | Callable[[], np.ndarray], data_id: str,
                        progress: bool = True) -> tuple[VQVAE, dict]:
    """The VQ-VAE for (``data_id``, ``cfg``), trained once on ``images`` (uint8 (N, C, H, W), or a
    function returning them, called only when the cache has no entry) and cached.

    Cache entry ``<cache>/tokenizers/<key>/`` with ``key = content_hash(data_id, asdict(cfg))``:
    ``vqvae.pt`` (config, in_channels and state_dict; loads with ``weights_only=True``) and
    ``info.json`` (the ``train_vqvae`` info plus ``key``). Concurrent callers are serialised by a
    file lock, so the model is trained once. The returned info carries ``from_cache`` and ``path``.
    """
    key = vqvae_cache_key(cfg, data_id)
    folder = cache_dir("tokenizers", key)
    weights, info_path = folder / WEIGHTS_FILE, folder / INFO_FILE
    with built_once(weights, lambda: weights.is_file() and info_path.is_file()) as from_cache:
        if from_cache:
            model, info, from_cache = VQVAE.load(weights), json.loads(info_path.read_text()), True
            logs.reused("tokenizer: train VQ-VAE", f"trained VQ-VAE in the cache ({folder})", part="data")
        else:
            with logs.stage(f"tokenizer: train VQ-VAE ({cfg.train_steps} steps)", part="data"):
                model, info = train_vqvae(cfg, images() if callable(images) else images, progress=progress)
            info = {**info, "key": key, "data_id": data_id}
            save_torch(model.state(), weights)
            save_json(info, info_path)
            from_cache = False
    return model, {**info, "from_cache": from_cache, "path": str(weights)}
