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
    from backbones.tokenizers.vqvae import VQVAE, VQVAEConfig
    from benchmarks.data.latents import LatentSpace
    from benchmarks.data.shards import CodeShards, write_meta, write_shard

    torch.manual_seed(0)
    tokenizer = VQVAE(VQVAEConfig(codebook_size=16, code_dim=4, channels=8, train_steps=1)).eval()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(96, 8, 8))
    labels = np.arange(96) % 10
    shard_dir = tmp_path / "shards"
    entry = write_shard(shard_dir, 0, codes, labels)
    write_meta(shard_dir, grid=(8, 8), codebook_size=16, num_classes=10, shards=[entry])
    return LatentSpace(
        tokenizer=tokenizer,
        shards=CodeShards(shard_dir),
        images=None,
        num_classes=10,
        image_size=32,
        info={"tokenizer": "toy"},
    )


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One project cache for the end-to-end tests of a session, so the smoke VQ-VAE and the
    MNIST feature extractor are trained once, not per test."""
    return tmp_path_factory.mktemp("vqflow-cache")


@pytest.fixture
def run_cli(shared_cache):
    """Run ``python -m benchmarks.run ARGS`` in a real subprocess from the project root."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def run(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "VQFLOW_CACHE": str(shared_cache), "PYTHONPATH": str(root)}
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc

    return run
