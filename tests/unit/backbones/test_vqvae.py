"""The suite's VQ-VAE: quantizer mechanics against hand formulas, training, caching, config checks."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from backbones.tokenizers.vqvae import VQVAE, EMAQuantizer, VQVAEConfig, code_usage, train_vqvae
from benchmarks.data.latents import load_or_train_vqvae, vqvae_cache_key

TINY = VQVAEConfig(codebook_size=16, code_dim=4, downsample=4, channels=16, train_steps=150, batch_size=32, lr=3e-3)


def rectangles(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> np.ndarray:
    """uint8 (n, channels, size, size): one random bright rectangle on black per image."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, channels, size, size), dtype=np.uint8)
    for img in images:
        top, left = rng.integers(0, size - 4, 2)
        h, w = rng.integers(4, size - max(top, left) + 1, 2)
        img[:, top : top + h, left : left + w] = rng.integers(128, 256, channels)[:, None, None]
    return images


@pytest.fixture(scope="module")
def trained():
    images = rectangles(256)
    model, info = train_vqvae(TINY, images, progress=False)
    return model, info, images


def test_straight_through_gradient_is_identity():
    q = EMAQuantizer(codebook_size=5, code_dim=3, decay=0.99)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    zq, codes, _ = q(z)
    expected = q.embedding[codes].permute(0, 3, 1, 2)
    assert torch.allclose(zq, expected, atol=1e-6)
    # nearest code by brute force
    dists = ((z.detach().permute(0, 2, 3, 1)[..., None, :] - q.embedding) ** 2).sum(-1)
    assert torch.equal(codes, dists.argmin(-1))
    weights = torch.randn_like(zq)
    (zq * weights).sum().backward()
    assert torch.allclose(z.grad, weights)


def test_reconstruction_gradient_reaches_the_encoder():
    model = VQVAE(TINY, in_channels=1).train()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    out = model(x)
    torch.nn.functional.mse_loss(out["recon"], x).backward()
    for p in model.encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(b.grad is None for b in model.quantizer.buffers())


def test_commitment_gradient_pulls_encoder_output_to_its_code():
    q = EMAQuantizer(codebook_size=3, code_dim=2, decay=0.99)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    _, codes, commit = q(z)
    commit.backward()
    e = q.embedding[codes].permute(0, 3, 1, 2)
    assert torch.allclose(z.grad, 2 * (z.detach() - e) / z.numel(), atol=1e-7)


def test_ema_update_matches_the_formula():
    decay = 0.9
    q = EMAQuantizer(codebook_size=3, code_dim=2, decay=decay)
    q.embedding.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]]))
    q.embed_sum.copy_(q.embedding * 2.0)
    q.cluster_size.fill_(2.0)
    z = torch.tensor([[1.0, 0.0], [1.0, 2.0], [4.0, 4.0], [6.0, 6.0], [4.0, 6.0]])
    codes = torch.tensor([0, 0, 1, 1, 1])
    before = q.embedding.clone()
    q.ema_update(z, codes)
    n = torch.tensor([2.0, 3.0, 0.0])
    sums = torch.stack([z[:2].sum(0), z[2:].sum(0), torch.zeros(2)])
    cluster = decay * 2.0 + (1 - decay) * n
    expected = (decay * before * 2.0 + (1 - decay) * sums) / cluster[:, None]
    assert torch.allclose(q.cluster_size, cluster)
    assert torch.allclose(q.embedding, expected, atol=1e-6)
    target0 = z[:2].mean(0)
    assert (q.embedding[0] - target0).norm() < (before[0] - target0).norm()
    assert torch.allclose(q.embedding[2], before[2])  # unused code: N and m decay together


def test_dead_code_restart_revives_unused_codes():
    q = EMAQuantizer(codebook_size=3, code_dim=2, decay=0.99, dead_threshold=1.0)
    q.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [100.0, 100.0]]))
    q.embed_sum.copy_(q.embedding)
    q.cluster_size.copy_(torch.tensor([30.0, 20.0, 0.2]))  # code 2 is dead
    gen = torch.Generator().manual_seed(0)
    near = torch.randn(200, 2, generator=gen) * 0.1
    far = torch.randn(20, 2, generator=gen) * 0.1 + torch.tensor([0.0, 10.0])
    z = torch.cat([near, far])
    restarted = q.restart_dead_codes(z, gen)
    assert restarted.tolist() == [False, False, True]
    assert torch.equal(q.embedding[:2], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert any(torch.equal(q.embedding[2], row) for row in far)  # seeded at a poorly covered vector
    assert q.cluster_size[2] == 1.0 and torch.equal(q.embed_sum[2], q.embedding[2])
    _, codes, _ = q(far.T.reshape(1, 2, 4, 5))
    assert (codes == 2).all()


def test_training_uses_most_codes_and_beats_the_mean_image(trained):
    model, info, images = trained
    x = torch.from_numpy(images).float() / 127.5 - 1
    baseline = float((x - x.mean(0)).square().mean())
    assert info["recon_mse"] < 0.5 * baseline
    assert info["codes_used"] >= 0.75 * TINY.codebook_size
    with torch.no_grad():
        codes = model.encode(x)
        mse = float((model.decode(codes) - x).square().mean())
    counts = np.bincount(codes.flatten().numpy(), minlength=TINY.codebook_size)
    p = counts[counts > 0] / counts.sum()
    assert info["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
    assert info["codes_used"] == int((counts > 0).sum())
    assert info["recon_mse"] == pytest.approx(mse, rel=1e-4)


def test_latents_are_standardised(trained):
    model, info, images = trained
    with torch.no_grad():
        z1 = model.embed(model.encode(torch.from_numpy(images).float() / 127.5 - 1))  # (N, d, h, w)
    flat = z1.permute(0, 2, 3, 1).reshape(-1, TINY.code_dim)
    assert flat.mean(0).abs().max() < 1e-4
    assert float(flat.std()) == pytest.approx(1.0, abs=1e-4)


def test_standardisation_leaves_codes_and_images_unchanged():
    torch.manual_seed(0)
    model = VQVAE(TINY, in_channels=3).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes, images = model.encode(x), model.decode(model.encode(x))
        model.standardize_latents_(torch.tensor([0.3, -1.0, 2.0, 0.5]), 2.5)
        assert torch.equal(model.encode(x), codes)
        assert torch.allclose(model.decode(codes), images, atol=1e-5)


@pytest.mark.parametrize("downsample", [2, 4, 8])
def test_encode_decode_shapes_and_ranges(downsample):
    cfg = replace(TINY, downsample=downsample)
    model = VQVAE(cfg, in_channels=3).eval()
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    with torch.no_grad():
        codes = model.encode(x)
        assert codes.shape == (2, 32 // downsample, 16 // downsample) and codes.dtype == torch.int64
        assert model.latent_grid((32, 16)) == tuple(codes.shape[1:])
        assert codes.min() >= 0 and codes.max() < cfg.codebook_size
        images = model.decode(codes)
    assert images.shape == x.shape and images.min() >= -1 and images.max() <= 1
    assert model.codebook.shape == (cfg.codebook_size, cfg.code_dim) and not model.normalized


def test_encode_rejects_bad_images():
    model = VQVAE(TINY, in_channels=1)
    with pytest.raises(ValueError, match="expects images"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 1, 18, 16))


def test_training_is_deterministic_given_the_seed():
    images = rectangles(64)
    cfg = replace(TINY, train_steps=5)
    a, _ = train_vqvae(cfg, images, progress=False)
    b, _ = train_vqvae(cfg, images, progress=False)
    c, _ = train_vqvae(replace(cfg, seed=1), images, progress=False)
    assert torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.codebook, c.codebook)


def test_train_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        train_vqvae(TINY, np.zeros((4, 1, 16, 16), dtype=np.float32), progress=False)
    with pytest.raises(ValueError, match="downsample"):
        train_vqvae(TINY, np.zeros((4, 1, 18, 18), dtype=np.uint8), progress=False)


def test_cache_hit_loads_the_same_model_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("VQFLOW_CACHE", str(tmp_path))
    images = rectangles(64)
    cfg = replace(TINY, train_steps=10)
    first, info1 = load_or_train_vqvae(cfg, images, "rects-64", progress=False)
    assert not info1["from_cache"]
    start = time.perf_counter()
    second, info2 = load_or_train_vqvae(cfg, images, "rects-64", progress=False)
    assert time.perf_counter() - start < 1.0
    assert info2["from_cache"] and info2["key"] == info1["key"] == vqvae_cache_key(cfg, "rects-64")
    assert torch.equal(first.codebook, second.codebook)
    x = torch.from_numpy(images).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(first.encode(x), second.encode(x))
    for key in ("recon_mse", "perplexity", "codes_used", "train_seconds"):
        assert info2[key] == pytest.approx(info1[key])
    blob = torch.load(tmp_path / "tokenizers" / info1["key"] / "vqvae.pt", weights_only=True)
    assert blob["config"] == asdict(cfg)
    # another dataset id or config is another entry
    assert not load_or_train_vqvae(cfg, images, "other", progress=False)[1]["from_cache"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("codebook_size", 1),
        ("codebook_size", 70000),
        ("code_dim", 0),
        ("downsample", 3),
        ("downsample", 16),
        ("channels", 0),
        ("train_steps", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("commitment", -0.1),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"VQVAEConfig.{field}"):
        VQVAEConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("codebook_size", 64.0), ("lr", "1e-3"), ("seed", True)])
def test_wrong_types_name_the_field(field, value):
    with pytest.raises(TypeError, match=f"VQVAEConfig.{field}"):
        VQVAEConfig(**{field: value})


def test_code_usage_formula():
    perplexity, used = code_usage(np.array([5, 5, 0, 0]))
    assert perplexity == pytest.approx(2.0) and used == 2


def test_paper_codebook_k16384_d4_trains_and_reports_usage():
    """K = 16384, d = 4 (LDM vq-f8's codebook) on 8x8 grids: a few steps run, usage is reported."""
    cfg = replace(TINY, codebook_size=16384, code_dim=4, downsample=4, channels=16, train_steps=5, batch_size=8)
    images = rectangles(32, size=32)
    start = time.perf_counter()
    model, info = train_vqvae(cfg, images, progress=False)
    seconds = time.perf_counter() - start
    k, tokens = cfg.codebook_size, len(images) * 8 * 8
    print(
        f"VQ-VAE K={k} d=4: {cfg.train_steps} steps in {seconds:.1f} s; codes used {info['codes_used']} "
        f"of {k} ({k - info['codes_used']} dead) over {tokens} tokens, perplexity {info['perplexity']:.0f} "
        f"(perplexity / K = {info['perplexity'] / k:.3f}), recon MSE {info['recon_mse']:.4f}"
    )
    assert model.codebook.shape == (k, 4)
    assert 1 < info["perplexity"] <= info["codes_used"] <= min(k, tokens)
    assert np.isfinite(info["recon_mse"])
