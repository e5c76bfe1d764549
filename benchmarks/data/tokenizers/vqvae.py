"""``vqvae``: the suite's VQ-VAE (``backbones.tokenizers.vqvae``), trained once per data set and
``tokenizer.vqvae`` config and cached.

Cache entry ``<cache>/tokenizers/<key>/`` with ``key = content_hash(data id, asdict(tokenizer.vqvae))``.
``tokenizer.ckpt`` is optional: a ``vqvae.pt`` that decodes pre-encoded shards (default: the cached
model recorded in the shards' ``meta.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from backbones.tokenizers.base import Tokenizer
from backbones.tokenizers.vqvae import INFO_FILE, VQVAE, WEIGHTS_FILE, VQVAEConfig, train_vqvae
from benchmarks.core import logs
from benchmarks.core.config import ConfigError, TokenizerConfig
from benchmarks.data.images import ArrayImages
from benchmarks.data.tokenizers.registry import (
    BuiltTokenizer,
    LoadImages,
    TokenizerKind,
    check_checkpoint_file,
    register,
)
from benchmarks.storage.atomic import built_once, save_json, save_torch
from benchmarks.storage.cache import cache_dir, content_hash


@register
class SuiteVQVAE(TokenizerKind):
    name = "vqvae"
    needs_ckpt = False

    def check(self, tok: TokenizerConfig) -> None:
        if not tok.ckpt:
            return
        path = Path(tok.ckpt).expanduser()
        if not path.is_file():
            raise ConfigError(f"tokenizer.ckpt: {path} does not exist (a vqvae.pt saved by the suite)")
        check_checkpoint_file(path)

    def geometry(self, tok: TokenizerConfig) -> tuple[int, int, int]:
        return tok.vqvae.codebook_size, tok.vqvae.code_dim, tok.vqvae.downsample

    def build(self, tok: TokenizerConfig, load: LoadImages, *, progress: bool = True) -> BuiltTokenizer:
        source = load(None)
        reference = source.images
        images = (
            reference.images
            if isinstance(reference, ArrayImages)
            else (lambda: np.stack([reference[i][0].numpy() for i in range(len(reference))]))
        )
        model, info = load_or_train_vqvae(tok.vqvae, images, source.id, progress=progress)
        return BuiltTokenizer(
            model,
            info["key"],
            source,
            info["from_cache"],
            {"recon_mse": info["recon_mse"], "recon_mse_images": len(reference)},
        )

    def open(self, tok: TokenizerConfig, recorded: dict, where: str) -> Tokenizer:
        if tok.ckpt:
            return VQVAE.load(tok.ckpt)
        weights = cache_dir("tokenizers") / str(recorded.get("key")) / WEIGHTS_FILE
        if not recorded.get("key") or not weights.is_file():
            raise FileNotFoundError(
                f"the VQ-VAE that encoded the shards at {where} is not in the cache ({weights}); "
                "set tokenizer.ckpt to its vqvae.pt"
            )
        return VQVAE.load(weights)


def vqvae_cache_key(cfg: VQVAEConfig, data_id: str) -> str:
    return content_hash(data_id, asdict(cfg))


def load_or_train_vqvae(
    cfg: VQVAEConfig, images: np.ndarray | Callable[[], np.ndarray], data_id: str, progress: bool = True
) -> tuple[VQVAE, dict]:
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
