"""Shared fixtures: an isolated project cache and a toy latent space that needs no training."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh, empty project cache for tests that must start cold."""
    path = tmp_path / "cache"
    monkeypatch.setenv("VQFLOW_CACHE", str(path))
    return path


@pytest.fixture
def toy_latents(tmp_path):
    """A LatentSpace over random 8x8 code grids (K = 16, 10 classes) with an untrained VQ-VAE
    as the tokenizer: enough to train and sample, with no tokenizer training."""
    from backbones.vqvae import VQVAE, VQVAEConfig
    from benchmarks.latents import LatentSpace
    from benchmarks.shards import CodeShards, write_meta, write_shard

    torch.manual_seed(0)
    tokenizer = VQVAE(VQVAEConfig(codebook_size=16, code_dim=4, channels=8, train_steps=1)).eval()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(96, 8, 8))
    labels = np.arange(96) % 10
    shard_dir = tmp_path / "shards"
    entry = write_shard(shard_dir, 0, codes, labels)
    write_meta(shard_dir, grid=(8, 8), codebook_size=16, num_classes=10, shards=[entry])
    return LatentSpace(tokenizer=tokenizer, shards=CodeShards(shard_dir), images=None, num_classes=10,
                       image_size=32, info={"tokenizer": "toy"})
