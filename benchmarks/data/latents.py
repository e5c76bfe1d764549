"""The latent-space preparation step: a dataset becomes a cached tokenizer plus code shards.

``prepare_latents`` resolves the tokenizer (the suite's VQ-VAE, trained once per dataset and config,
or a pretrained VQ tokenizer loaded from the user's checkpoint), encodes every image once to code
indices in ``<cache>/shards/<key>/`` (``benchmarks.data.shards`` format) and returns everything training
and evaluation need as a ``LatentSpace``. A second call with the same inputs only opens the cache.

The data set and the tokenizer are registry entries (``benchmarks.data.datasets``,
``benchmarks.data.tokenizers``): the data set reads the images (``ImageSource``) or opens
pre-encoded shards, the tokenizer kind trains or loads the tokenizer.

Cache keys: the shard folder is ``content_hash(data_id, tokenizer_key)``, where ``data_id`` is the
data set's content id (a hash of the images for MNIST-5k, of the file list with sizes and
modification times plus the preprocessing for an image folder) and ``tokenizer_key`` the tokenizer
kind's cache key (the VQ-VAE's, or a hash of the checkpoint's kind, path, size and modification time).

Shard folders written here carry, besides the ``benchmarks.data.shards`` fields, ``tokenizer`` (kind, key,
codebook geometry), ``data`` (dataset, id, image size) and ``quality`` (recon_mse, perplexity,
codes_used) in ``meta.json``. They are written shard by shard with ``complete: false`` until the
last one, so an interrupted encoding resumes where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from backbones.tokenizers.base import Tokenizer
from backbones.tokenizers.vqvae import VQVAEConfig, code_usage
from benchmarks.core import logs
from benchmarks.core.config import DataConfig, TokenizerConfig
from benchmarks.data.datasets import get_dataset
from benchmarks.data.images import to_model_range
from benchmarks.data.shards import CodeShards, read_meta, write_meta, write_shard
from benchmarks.data.tokenizers import get_tokenizer
from benchmarks.data.tokenizers.vqvae import load_or_train_vqvae, vqvae_cache_key  # noqa: F401  (the API's old home)
from benchmarks.storage.atomic import built_once
from benchmarks.storage.cache import cache_dir, content_hash

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
    frequencies with ``perplexity_per_code`` (perplexity / K) and ``dead_codes`` (K - codes_used),
    dataset id and counts.
    """

    tokenizer: Tokenizer
    shards: CodeShards
    images: Dataset | None
    num_classes: int
    image_size: int
    info: dict


def prepare_latents(
    dataset: str,
    path: str | None,
    image_size: int,
    tokenizer_kind: str,
    ckpt: str | None,
    vqvae: VQVAEConfig,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
) -> LatentSpace:
    """Resolve the tokenizer and the code shards of ``dataset`` (cached; see the module docstring).

    dataset: a registered data set (``benchmarks.data.datasets``: ``"mnist5k"``, ``"imagefolder"``
    with ``path`` = ROOT/<class>/<image>, ``"shards"`` with ``path`` = a folder written by
    ``python -m benchmarks.encode``, ...). tokenizer_kind: a registered tokenizer
    (``benchmarks.data.tokenizers``: ``"vqvae"``, trained here with ``vqvae``, or a pretrained kind
    read from ``ckpt``). Encoding runs on ``device`` (default: CUDA if available, else CPU).
    """
    try:
        source_set, kind = get_dataset(dataset), get_tokenizer(tokenizer_kind)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    if kind.needs_ckpt and not ckpt:
        raise ValueError(
            f"tokenizer.ckpt is required for tokenizer kind {tokenizer_kind!r}: "
            "the path to its checkpoint file on this machine"
        )
    data = DataConfig(dataset=dataset, path=path, image_size=image_size)
    tok = TokenizerConfig(kind=tokenizer_kind, ckpt=ckpt, vqvae=vqvae)
    if source_set.encoded:
        return _open_encoded(source_set.open_shards(data), data, tok)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    what = f"the downsampling f of tokenizer {tokenizer_kind!r}"
    _check_divisible(image_size, kind.geometry(tok)[2], what)
    built = kind.build(tok, lambda channels: source_set.load(data, channels), progress=progress)
    tokenizer, reference, num_classes, data_id = (
        built.tokenizer,
        built.source.images,
        built.source.num_classes,
        built.source.id,
    )
    _check_divisible(image_size, tokenizer.downsample, what)
    quality = built.quality

    shard_dir = cache_dir("shards", content_hash(data_id, built.key))
    with built_once(shard_dir / "meta.json", lambda: _complete(shard_dir)) as from_cache:
        if not from_cache:
            if quality is None:
                quality = {
                    "recon_mse": _recon_mse(tokenizer, reference, device),
                    "recon_mse_images": min(RECON_SAMPLE, len(reference)),
                }
            extra = {
                "tokenizer": {
                    **_tokenizer_meta(tokenizer),
                    "kind": tokenizer_kind,
                    "key": built.key,
                    "ckpt": str(ckpt) if ckpt else None,
                },
                "data": {
                    "dataset": dataset,
                    "id": data_id,
                    "image_size": image_size,
                    "path": str(path) if path else None,
                },
                "quality": quality,
            }
            with logs.stage(f"tokenizer: encode {len(reference)} images to codes", part="data"):
                encode_to_shards(
                    tokenizer,
                    reference,
                    shard_dir,
                    grid=tokenizer.latent_grid(image_size),
                    num_classes=num_classes,
                    extra=extra,
                    device=device,
                    progress=progress,
                )
        else:
            logs.reused("tokenizer: encode images to codes", f"codes in the cache ({shard_dir})", part="data")
    shards = CodeShards(shard_dir)
    tokenizer.cpu().eval().requires_grad_(False)
    info = {**_info_from_meta(shards), "from_cache": from_cache, "tokenizer_from_cache": built.from_cache}
    return LatentSpace(tokenizer, shards, reference, num_classes, image_size, info)


@torch.no_grad()
def encode_to_shards(
    tokenizer: Tokenizer,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    grid: tuple[int, int],
    num_classes: int,
    extra: dict,
    device: torch.device,
    progress: bool = True,
    batch_size: int = 256,
    shard_size: int = SHARD_SIZE,
) -> None:
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
    loader = DataLoader(
        Subset(dataset, range(start, len(dataset))),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0 if len(dataset) < 4 * SHARD_SIZE else min(8, os.cpu_count() or 1),
    )
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


def _open_encoded(shards: CodeShards, data: DataConfig, tok: TokenizerConfig) -> LatentSpace:
    """Pre-encoded shards plus the tokenizer that decodes them (``images`` is None)."""
    path, kind, image_size = data.path, tok.kind, data.image_size
    recorded = shards.meta.get("tokenizer") or {}
    if recorded.get("kind") not in (None, kind):
        raise ValueError(
            f"shards at {path} were encoded with tokenizer {recorded['kind']!r}, but tokenizer.kind is {kind!r}"
        )
    tokenizer = get_tokenizer(kind).open(tok, recorded, str(path))
    if tokenizer.codebook_size != shards.codebook_size:
        raise ValueError(
            f"shards at {path} have codebook size {shards.codebook_size}, the tokenizer has {tokenizer.codebook_size}"
        )
    if tuple(shards.grid) != tokenizer.latent_grid(image_size):
        raise ValueError(
            f"shards at {path} have a {tuple(shards.grid)} code grid, but data.image_size={image_size} "
            f"gives {tokenizer.latent_grid(image_size)} with this tokenizer"
        )
    info = {**_info_from_meta(shards), "tokenizer": kind, "from_cache": True}
    return LatentSpace(tokenizer, shards, None, shards.num_classes, image_size, info)


def _check_divisible(image_size: int, factor: int, what: str) -> None:
    if image_size % factor:
        raise ValueError(f"data.image_size={image_size} is not divisible by {what}={factor}")


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
    return {
        "codebook_size": tokenizer.codebook_size,
        "code_dim": tokenizer.code_dim,
        "downsample": tokenizer.downsample,
        "in_channels": tokenizer.in_channels,
        "normalized": tokenizer.normalized,
    }


def _info_from_meta(shards: CodeShards) -> dict:
    meta = shards.meta
    tok, data, quality = meta.get("tokenizer") or {}, meta.get("data") or {}, meta.get("quality") or {}
    return {
        "tokenizer": tok.get("kind"),
        "tokenizer_key": tok.get("key"),
        "shard_dir": str(shards.shard_dir),
        "dataset": data.get("dataset"),
        "data_id": data.get("id"),
        "recon_mse": quality.get("recon_mse"),
        "recon_mse_images": quality.get("recon_mse_images"),
        "perplexity": quality.get("perplexity"),
        "codes_used": quality.get("codes_used"),
        "codebook_size": shards.codebook_size,
        **_usage(quality, shards.codebook_size),
        "grid": list(shards.grid),
        "num_images": len(shards),
        "num_classes": shards.num_classes,
    }


def _usage(quality: dict, k: int) -> dict:
    """Codebook usage over the encoded images: ``perplexity / K`` and dead codes ``K - codes_used``."""
    if quality.get("perplexity") is None or quality.get("codes_used") is None:
        return {}
    return {"perplexity_per_code": quality["perplexity"] / k, "dead_codes": k - quality["codes_used"]}
