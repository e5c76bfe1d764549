"""Metrics layer: the mnist-cnn extractor, reference statistics and torch-fidelity metrics.

One reduced-config classifier is trained per module (a few seconds) in an isolated cache.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from benchmarks.data.images import ArrayImages, load_mnist5k
from benchmarks.evaluation import fidelity, mnist_cnn
from benchmarks.evaluation.extractors import get_feature_extractor
from benchmarks.evaluation.metrics import metric_columns
from benchmarks.storage.cache import cache_dir

TEST_CONFIG = mnist_cnn.TrainConfig(epochs=2)
N = 400  # images per set


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Isolated cache; the classifier; two disjoint random MNIST subsets A, B and A's reference."""
    images, labels = load_mnist5k()
    cache = tmp_path_factory.mktemp("cache")
    (cache / "data").mkdir()
    shutil.copy(cache_dir("data") / "mnist5k.npz", cache / "data")  # the data, not derived state
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQFLOW_CACHE", str(cache))
        spec = fidelity.mnist_extractor(TEST_CONFIG)
        perm = np.random.default_rng(0).permutation(len(images))
        a, b = torch.from_numpy(images[perm[:N]]), torch.from_numpy(images[perm[N : 2 * N]])
        ref = fidelity.reference_from_images(a, spec, "setA", progress=False)
        yield {
            "spec": spec,
            "a": a,
            "b": b,
            "labels_a": labels[perm[:N]],
            "labels_b": labels[perm[N : 2 * N]],
            "ref": ref,
        }


def metrics(images, env, **kw):
    return fidelity.compute_metrics(images, env["ref"], env["spec"], progress=False, kid_subsets=20, **kw)


def noisy(images, std=80.0):
    noise = std * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def test_extractor_is_cached_and_honestly_named(env):
    spec = env["spec"]
    assert spec.name == "mnist-cnn" and spec.id.startswith("mnist-cnn:") and "inception" not in spec.id
    assert FEATURE_EXTRACTORS_REGISTRY["mnist-cnn"] is mnist_cnn.FeatureExtractorMnistCNN
    info = json.loads((Path(spec.weights_path).parent / "info.json").read_text())
    assert info["num_holdout"] == 500 and info["holdout_accuracy"] >= 0.9 and info["train_seconds"] > 0
    assert info["config"]["epochs"] == TEST_CONFIG.epochs
    ckpt = torch.load(spec.weights_path, weights_only=True)
    assert set(ckpt) == {"arch", "state_dict"}
    assert fidelity.mnist_extractor(TEST_CONFIG) == spec  # cached: same file, same key, no retraining
    images, labels = load_mnist5k()
    assert info["key"] == mnist_cnn.weights_key(images, labels, TEST_CONFIG) in spec.weights_path
    assert mnist_cnn.weights_key(images, labels, mnist_cnn.TrainConfig(epochs=1)) != info["key"]
    assert mnist_cnn.weights_key(images[::-1], labels, TEST_CONFIG) != info["key"]


def test_extractor_id_is_the_same_when_trained_again_elsewhere(env, tmp_path, monkeypatch):
    """Results name the extractor by a hash of its weights file; training it again in another cache
    (another machine) must give the same file bytes, so runs from both merge as one extractor."""
    (tmp_path / "data").mkdir()
    shutil.copy(cache_dir("data") / "mnist5k.npz", tmp_path / "data")
    monkeypatch.setenv("VQFLOW_CACHE", str(tmp_path))
    again = fidelity.mnist_extractor(TEST_CONFIG)
    assert again.weights_path != env["spec"].weights_path and again.id == env["spec"].id


def test_extractor_features_channels_and_sizes(env):
    spec, a = env["spec"], env["a"][:32]
    assert mnist_cnn.FeatureExtractorMnistCNN.get_provided_features_list() == ("penultimate", "logits")
    assert [spec.layer(m) for m in ("fid", "kid", "prc", "isc")] == ["penultimate"] * 3 + ["logits"]
    fe = mnist_cnn.FeatureExtractorMnistCNN(
        "mnist-cnn", ["penultimate", "logits"], feature_extractor_weights_path=spec.weights_path
    )
    feats, logits = fe(a)
    assert feats.shape == (32, 128) and logits.shape == (32, 10) and (feats >= 0).all()
    assert (logits.argmax(-1).numpy() == env["labels_a"][:32]).mean() >= 0.85
    grey_as_rgb = fe(a.expand(-1, 3, -1, -1))  # R = G = B = grey: luma weights sum to 1
    torch.testing.assert_close(grey_as_rgb[0], feats, atol=1e-4, rtol=1e-4)
    assert fe(a[:, :, 2:30, 2:30])[0].shape == (32, 128)  # 28x28 is resized
    with pytest.raises(ValueError, match="uint8"):
        fe(a.float())
    with pytest.raises(ValueError, match="weights_path"):
        mnist_cnn.FeatureExtractorMnistCNN("mnist-cnn", ["logits"])


def test_self_real_and_perturbed(env):
    same, real, perturbed = metrics(env["a"], env), metrics(env["b"], env), metrics(noisy(env["b"]), env)
    assert abs(same["fid"]) < 1e-3 and same["precision"] == same["recall"] == 1.0
    assert real["fid"] > 0 and perturbed["fid"] > 3 * real["fid"]
    assert perturbed["kid_mean"] > 10 * abs(real["kid_mean"])
    assert perturbed["recall"] < real["recall"] - 0.2
    assert real["isc"] > 6  # 10 balanced classes, confident classifier (10 splits of 40 images)
    for m in (same, real, perturbed):
        assert (
            list(m)
            == metric_columns()
            == ["fid", "kid_mean", "kid_std", "precision", "recall", "isc", "isc_std", "class_accuracy"]
        )
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1


def test_equals_torch_fidelity_calculate_metrics(env):
    ours = metrics(env["b"], env, kid_subset_size=100)
    theirs = torch_fidelity.calculate_metrics(
        input1=fidelity.ImageSet(env["b"]),
        input2=fidelity.ImageSet(env["a"]),
        cuda=False,
        isc=True,
        fid=True,
        kid=True,
        prc=True,
        feature_extractor="mnist-cnn",
        feature_extractor_weights_path=env["spec"].weights_path,
        kid_subset_size=100,
        kid_subsets=20,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)
    assert ours["precision"] == theirs["precision"] and ours["recall"] == theirs["recall"]
    assert ours["isc"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert ours["isc_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-9)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-6)


def test_fid_and_kid_match_independent_formulas(env):
    """FID = |mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr (S1^1/2 S2 S1^1/2)^1/2 (symmetric eigensolves);
    KID over the whole sets = unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3 (X-X and Y-Y diagonals
    dropped, X-Y averaged over all m^2 pairs)."""
    f1 = fidelity.extract_features(env["b"], env["spec"], progress=False)["penultimate"].double().numpy()
    f2 = env["ref"].features["penultimate"].double().numpy()

    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r = sqrt_psd(s1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    fid = np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean

    def kernel(x, y):
        return (x @ y.T / x.shape[1] + 1) ** 3

    m = len(f1)
    kxx, kyy, kxy = kernel(f1, f1), kernel(f2, f2), kernel(f1, f2)
    kid = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    out = metrics(env["b"], env)  # subsets of the whole sets: a single subset is computed
    assert out["fid"] == pytest.approx(fid, rel=1e-3)
    assert out["kid_mean"] == pytest.approx(kid, rel=1e-3, abs=1e-3) and out["kid_std"] == 0


def test_npz_reference_stats_only_and_with_images(env, tmp_path):
    spec, ref, b = env["spec"], env["ref"], env["b"]
    image_ref = metrics(b, env)
    stats_path = tmp_path / "stats.npz"
    fidelity.save_reference_npz(ref, stats_path)
    stats_ref = fidelity.reference_from_npz(stats_path, stats_extractor="mnist-cnn")
    assert stats_ref.id.startswith("adm-npz:stats.npz-") and stats_ref.features is None
    with pytest.warns(UserWarning, match="NaN"):
        out = fidelity.compute_metrics(b, stats_ref, spec, progress=False)
    assert out["fid"] == pytest.approx(image_ref["fid"], rel=1e-6)
    assert out["isc"] == pytest.approx(image_ref["isc"], rel=1e-9)
    assert all(math.isnan(out[k]) for k in ("kid_mean", "kid_std", "precision", "recall"))

    adm_style = tmp_path / "adm.npz"  # ADM layout: images NHWC in arr_0 next to mu and sigma
    np.savez(adm_style, arr_0=env["a"].permute(0, 2, 3, 1).numpy(), **ref.fid_stats)
    full = fidelity.reference_from_npz(adm_style, spec, stats_extractor="mnist-cnn")
    assert full.features is not None and full.num_images == N
    out = metrics(b, {"ref": full, "spec": spec})
    assert out == pytest.approx(image_ref, rel=1e-6, nan_ok=True)  # class_accuracy: NaN without labels

    with pytest.raises(ValueError, match="inception-v3-compat statistics"):
        fidelity.reference_from_npz(adm_style, spec)
    np.savez(tmp_path / "bad.npz", mu=ref.fid_stats["mu"])
    with pytest.raises(ValueError, match="sigma"):
        fidelity.reference_from_npz(tmp_path / "bad.npz")
    inception_stats = fidelity.reference_from_npz(stats_path)  # claims Inception statistics
    with pytest.raises(ValueError, match="computed with feature extractor inception-v3-compat"):
        fidelity.compute_metrics(b, inception_stats, spec, progress=False)


def test_reference_cache_is_keyed_by_content(env, monkeypatch):
    spec, a = env["spec"], env["a"]
    ds = ArrayImages(a.numpy(), env["labels_a"])

    def no_extraction(*args, **kwargs):
        raise AssertionError("reference features were recomputed instead of loaded")

    with monkeypatch.context() as m:
        m.setattr(fidelity, "extract_features", no_extraction)
        again = fidelity.reference_from_images(ds, spec, "setA", progress=False)  # same pixels as a Dataset
    assert again.id == env["ref"].id
    torch.testing.assert_close(again.features["penultimate"], env["ref"].features["penultimate"])
    changed = a.clone()
    changed[0, 0, 16, 16] ^= 1
    other = fidelity.reference_from_images(changed, spec, "setA", progress=False)
    assert other.id != env["ref"].id
    assert len(list(fidelity.cache_dir("refstats").glob("setA-*.npz"))) == 2


def test_inception_weights_missing_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fidelity.INCEPTION_ENV, raising=False)
    assert fidelity.INCEPTION_FILE == "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth") as err:
        fidelity.inception_extractor()
    assert "https://github.com/toshas/torch-fidelity/releases" in str(err.value)
    monkeypatch.setenv(fidelity.INCEPTION_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist.*weights-inception"):
        fidelity.inception_extractor()
    local = tmp_path / fidelity.INCEPTION_FILE
    local.write_bytes(b"stand-in weights")  # only located and hashed here, never loaded
    spec = fidelity.inception_extractor(local)
    assert (spec.name, spec.channels, spec.weights_path) == ("inception-v3-compat", 3, str(local))
    assert spec.layer("fid") == "2048" and spec.layer("isc") == "logits_unbiased"
    assert fidelity.ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), channels=3)[0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="unknown feature extractor 'inception'"):
        fidelity.get_extractor("inception")


class LevelTokenizer(torch.nn.Module):
    """A real (if trivial) VQ tokenizer: codes are the nearest of ``k`` grey levels in [-1, 1] to the
    mean of each f x f patch; decoding paints each patch with its level."""

    def __init__(self, k, f=1):
        super().__init__()
        self.levels, self.f = torch.linspace(-1, 1, k), f

    def encode(self, x):
        return (torch.nn.functional.avg_pool2d(x, self.f)[:, 0, :, :, None] - self.levels).abs().argmin(-1)

    def decode(self, codes):
        return self.levels[codes][:, None].repeat_interleave(self.f, 2).repeat_interleave(self.f, 3)


def test_reconstruction_metrics(env):
    spec, ref, a = env["spec"], env["ref"], env["a"]
    kw = dict(progress=False, kid_subsets=20)
    exact = fidelity.reconstruction_metrics(LevelTokenizer(256), a, ref, spec, **kw)
    assert abs(exact["fid"]) < 1e-3 and exact["psnr"] == math.inf
    three_levels = fidelity.reconstruction_metrics(LevelTokenizer(3), a, ref, spec, **kw)
    recon = torch.tensor([0, 128, 255], dtype=torch.uint8)[(a.float() / 127.5).round().long()]
    mse = (recon.double() - a.double()).pow(2).mean().item()
    assert three_levels["psnr"] == pytest.approx(10 * math.log10(255**2 / mse))
    assert three_levels["fid"] == pytest.approx(metrics(recon, env)["fid"], rel=1e-9)
    blocky = fidelity.reconstruction_metrics(LevelTokenizer(256, f=4), a, ref, spec, **kw)
    real = metrics(env["b"], env)
    assert blocky["fid"] > 3 * real["fid"] and blocky["psnr"] < three_levels["psnr"]


def test_class_accuracy_of_real_and_mislabelled_images(env):
    """Real digits of known classes score the classifier's own accuracy on them (computed here
    directly from its logits) and about its held-out accuracy; shuffled labels score about chance
    (1/10; the standard error at N=400 is 0.015)."""
    spec, b, labels = env["spec"], env["b"], env["labels_b"]
    with torch.no_grad():
        direct = (
            mnist_cnn.load_classifier(spec.weights_path)(mnist_cnn.to_input(b)).argmax(1).numpy() == labels
        ).mean()
    real = metrics(b, env, labels=labels)["class_accuracy"]
    assert real == pytest.approx(direct, abs=1e-9)
    holdout = json.loads((Path(spec.weights_path).parent / "info.json").read_text())["holdout_accuracy"]
    assert real >= holdout - 0.05
    shuffled = np.random.default_rng(0).permutation(labels)
    assert abs(metrics(b, env, labels=shuffled)["class_accuracy"] - 0.1) < 0.06
    assert math.isnan(metrics(b, env)["class_accuracy"])  # no labels: not defined


def test_class_accuracy_needs_class_logits_and_valid_labels(env):
    feats = fidelity.extract_features(env["b"], env["spec"], progress=False)
    no_classes = fidelity.ExtractorSpec("dummy-no-class-head", "", "0")
    assert no_classes.class_layer is None and "logits" in env["spec"].layers
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        fidelity.metrics_from_features(feats, env["ref"], env["spec"], labels=np.full(N, 10), kid_subsets=2)
    with pytest.raises(ValueError, match="3 labels for 400 images"):
        fidelity.metrics_from_features(feats, env["ref"], env["spec"], labels=[0, 1, 2], kid_subsets=2)
    assert (
        get_feature_extractor(fidelity.INCEPTION).class_layer is None
        and fidelity.INCEPTION in fidelity.CLASS_ACCURACY_NOTE
    )
    assert get_feature_extractor(mnist_cnn.NAME).class_layer == env["spec"].class_layer == "logits"


def test_reconstruction_class_accuracy_is_the_images(env):
    """A lossless tokenizer's floor has the real images' class accuracy; a coarse one loses some."""
    spec, ref, a, labels = env["spec"], env["ref"], env["a"], env["labels_a"]
    kw = dict(progress=False, kid_subsets=20, labels=labels)
    exact = fidelity.reconstruction_metrics(LevelTokenizer(256), a, ref, spec, **kw)
    assert exact["class_accuracy"] == metrics(a, env, labels=labels)["class_accuracy"] > 0.9
    blocky = fidelity.reconstruction_metrics(LevelTokenizer(256, f=8), a, ref, spec, **kw)
    assert blocky["class_accuracy"] < exact["class_accuracy"] - 0.1


def test_bad_inputs_are_named(env):
    with pytest.raises(ValueError, match="uint8"):
        metrics(env["b"].float(), env)
    with pytest.raises(ValueError, match="at least 10 generated images"):
        metrics(env["b"][:5], env)
    with pytest.raises(ValueError, match="kid_subset_size=500"):
        metrics(env["b"], env, kid_subset_size=500)
    with pytest.raises(ValueError, match="reference name"):
        fidelity.reference_from_images(env["a"], env["spec"], "bad/name")
    with pytest.raises(ValueError, match="has 4 channels"):
        fidelity.ImageSet(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), channels=3)
