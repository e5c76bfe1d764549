"""prepare_latents: tokenizer + code shards from MNIST-5k, an image folder or pre-encoded shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from backbones.tokenizers.vqvae import VQVAE, VQVAEConfig
from benchmarks.data.images import ImageFolder, load_mnist5k, to_model_range
from benchmarks.data.latents import encode_to_shards, prepare_latents
from benchmarks.data.shards import CodeShards, read_meta

TINY = VQVAEConfig(codebook_size=32, code_dim=4, downsample=4, channels=16, train_steps=40, batch_size=32)
FOLDER_CFG = VQVAEConfig(codebook_size=8, code_dim=2, downsample=4, channels=8, train_steps=5, batch_size=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("VQFLOW_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def mnist(cache):
    return prepare_latents("mnist5k", None, 32, "vqvae", None, TINY, progress=False)


def encode_all(tokenizer, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([tokenizer.encode(to_model_range(images[i : i + 1000])) for i in range(0, len(images), 1000)])


def all_codes(shards: CodeShards) -> tuple[torch.Tensor, torch.Tensor]:
    return shards.batch(torch.arange(len(shards)))


def make_folder(root, mode: str, per_class: int = 4, size: int = 20, seed: int = 0):
    """ROOT/{cat,dog}/NN.png: random blobs, ``size`` px (centre-cropped to 16 by the loader)."""
    rng = np.random.default_rng(seed)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i:02d}.png")
    return root


def test_mnist_shards_match_the_tokenizer_encoding_and_labels(mnist):
    images, labels = load_mnist5k()
    codes, shard_labels = all_codes(mnist.shards)
    assert torch.equal(codes, encode_all(mnist.tokenizer, torch.from_numpy(images)))
    assert np.array_equal(shard_labels.numpy(), labels)
    assert mnist.shards.grid == (8, 8) and mnist.shards.codebook_size == TINY.codebook_size
    assert mnist.num_classes == 10 and mnist.image_size == 32
    image, label = mnist.images[123]
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(images[123])) and label == labels[123]


def test_mnist_info_reports_quality_from_independent_formulas(mnist):
    images = torch.from_numpy(load_mnist5k()[0])
    codes, _ = all_codes(mnist.shards)
    counts = np.bincount(codes.flatten().numpy(), minlength=TINY.codebook_size)
    p = counts[counts > 0] / counts.sum()
    with torch.no_grad():
        x = to_model_range(images)
        mse = float((mnist.tokenizer.decode(codes) - x).square().mean())
    info = mnist.info
    assert info["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert info["codes_used"] == int((counts > 0).sum())
    assert info["dead_codes"] == int((counts == 0).sum())
    assert info["perplexity_per_code"] == pytest.approx(info["perplexity"] / TINY.codebook_size)
    assert info["recon_mse"] == pytest.approx(mse, rel=1e-4) and info["recon_mse_images"] == 5000
    assert info["num_images"] == 5000 and info["grid"] == [8, 8] and info["dataset"] == "mnist5k"
    assert info["tokenizer"] == "vqvae" and not info["from_cache"] and not info["tokenizer_from_cache"]


def test_second_call_opens_the_cache_without_retraining(mnist):
    again = prepare_latents("mnist5k", None, 32, "vqvae", None, TINY, progress=False)
    assert again.info["from_cache"] and again.info["tokenizer_from_cache"]
    assert again.info["shard_dir"] == mnist.info["shard_dir"]
    assert torch.equal(again.tokenizer.codebook, mnist.tokenizer.codebook)
    assert torch.equal(all_codes(again.shards)[0], all_codes(mnist.shards)[0])


def test_pre_encoded_shards_reuse_the_cached_vqvae(mnist):
    space = prepare_latents("shards", mnist.info["shard_dir"], 32, "vqvae", None, TINY, progress=False)
    assert space.images is None and len(space.shards) == 5000 and space.num_classes == 10
    assert torch.equal(space.tokenizer.codebook, mnist.tokenizer.codebook)
    with pytest.raises(ValueError, match="data.image_size"):
        prepare_latents("shards", mnist.info["shard_dir"], 64, "vqvae", None, TINY, progress=False)
    with pytest.raises(ValueError, match="encoded with tokenizer 'vqvae'"):
        prepare_latents("shards", mnist.info["shard_dir"], 32, "vq-f8", "some.ckpt", TINY, progress=False)
    with pytest.raises(ValueError, match="data.path"):
        prepare_latents("shards", None, 32, "vqvae", None, TINY, progress=False)


def test_bad_arguments_name_the_key(cache):
    registered = "registered: fashion-mnist, imagefolder, mnist5k, shards"
    with pytest.raises(ValueError, match=f"unknown data set 'cifar10'; {registered}"):
        prepare_latents("cifar10", None, 32, "vqvae", None, TINY, progress=False)
    with pytest.raises(ValueError, match="tokenizer.ckpt"):
        prepare_latents("mnist5k", None, 32, "vq-f8", None, TINY, progress=False)
    with pytest.raises(ValueError, match="data.image_size"):
        prepare_latents("mnist5k", None, 28, "vqvae", None, TINY, progress=False)
    with pytest.raises(ValueError, match="data.path"):
        prepare_latents("imagefolder", None, 16, "vqvae", None, TINY, progress=False)


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_imagefolder_with_the_vqvae(cache, tmp_path, mode, channels):
    root = make_folder(tmp_path / "images", mode)
    space = prepare_latents("imagefolder", str(root), 16, "vqvae", None, FOLDER_CFG, progress=False)
    assert space.tokenizer.in_channels == channels and space.num_classes == 2
    assert isinstance(space.images, ImageFolder) and space.shards.grid == (4, 4)
    images = torch.stack([space.images[i][0] for i in range(len(space.images))])
    assert images.shape == (8, channels, 16, 16)
    codes, labels = all_codes(space.shards)
    assert torch.equal(codes, encode_all(space.tokenizer, images))
    assert labels.tolist() == [0] * 4 + [1] * 4
    assert space.info["dataset"] == "imagefolder" and space.info["num_images"] == 8
    # a new image is a new dataset: retrained and re-encoded, not a stale cache hit
    Image.new(mode, (20, 20)).save(root / "dog" / "99.png")
    grown = prepare_latents("imagefolder", str(root), 16, "vqvae", None, FOLDER_CFG, progress=False)
    assert not grown.info["from_cache"] and len(grown.shards) == 9
    assert grown.info["shard_dir"] != space.info["shard_dir"]


def test_pretrained_kind_is_loaded_lazily_from_the_checkpoint(cache, tmp_path, monkeypatch):
    import backbones.tokenizers.pretrained

    ckpt = tmp_path / "vq-f8.ckpt"
    ckpt.write_bytes(b"weights")
    torch.manual_seed(0)
    fake = VQVAE(VQVAEConfig(codebook_size=16, code_dim=4, downsample=8, channels=8), in_channels=3).eval()
    calls = []

    def load_tokenizer(kind, path):
        calls.append((kind, path))
        return fake

    monkeypatch.setattr(backbones.tokenizers.pretrained, "load_tokenizer", load_tokenizer)
    root = make_folder(tmp_path / "images", "L", per_class=3)
    space = prepare_latents("imagefolder", str(root), 16, "vq-f8", str(ckpt), TINY, progress=False)
    assert calls == [("vq-f8", str(ckpt))]
    assert space.images.mode == "RGB" and space.shards.grid == (2, 2)  # grey files, RGB tokenizer
    images = torch.stack([space.images[i][0] for i in range(len(space.images))])
    assert torch.equal(all_codes(space.shards)[0], encode_all(fake, images))
    with torch.no_grad():
        x = to_model_range(images)
        mse = float((fake.decode(fake.encode(x)) - x).square().mean())
    assert space.info["recon_mse"] == pytest.approx(mse, rel=1e-5) and space.info["recon_mse_images"] == 6
    assert space.info["tokenizer"] == "vq-f8" and read_meta(space.shards.shard_dir)["tokenizer"]["kind"] == "vq-f8"
    # pre-encoded shards with a pretrained kind load the tokenizer from the checkpoint too
    again = prepare_latents("shards", space.info["shard_dir"], 16, "vq-f8", str(ckpt), TINY, progress=False)
    assert again.tokenizer is fake and again.images is None


class FailingAfter(Dataset):
    """Wraps a dataset; raises once index ``fail_at`` is read (a crash mid-encoding)."""

    def __init__(self, base, fail_at: int | None):
        self.base, self.fail_at = base, fail_at

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError("disk error")
        return self.base[i]


def test_interrupted_encoding_resumes_where_it_stopped(tmp_path):
    from benchmarks.data.images import ArrayImages

    rng = np.random.default_rng(0)
    data = ArrayImages(rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8), np.arange(10) % 3)
    tok = VQVAE(VQVAEConfig(codebook_size=8, code_dim=2, channels=4), in_channels=1).eval()
    kwargs = dict(
        grid=(2, 2),
        num_classes=3,
        extra={"note": "x"},
        device=torch.device("cpu"),
        progress=False,
        batch_size=2,
        shard_size=4,
    )
    out = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="disk error"):
        encode_to_shards(tok, FailingAfter(data, 6), out, **kwargs)
    partial = read_meta(out)
    assert not partial["complete"] and [s["count"] for s in partial["shards"]] == [4]
    encode_to_shards(tok, FailingAfter(data, None), out, **kwargs)
    meta = read_meta(out)
    assert meta["complete"] and [s["count"] for s in meta["shards"]] == [4, 4, 2] and meta["note"] == "x"
    codes, labels = all_codes(CodeShards(out))
    assert torch.equal(codes, encode_all(tok, torch.from_numpy(data.images)))
    assert labels.tolist() == (np.arange(10) % 3).tolist()
