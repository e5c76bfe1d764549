"""Fashion-MNIST: the loader on the real idx files, and on missing, truncated and wrong files."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.core.config import ConfigError, DataConfig
from benchmarks.data.datasets import get_dataset
from benchmarks.data.datasets.fashion_mnist import DEBIAN_PACKAGE, DEFAULT_PATH, FILES, SPLITS
from benchmarks.data.images import ArrayImages
from benchmarks.evaluation.extractors import get_feature_extractor
from benchmarks.evaluation.fidelity import extract_features

ROOT = Path(__file__).resolve().parents[3]
real_files = pytest.mark.skipif(
    not Path(DEFAULT_PATH).is_dir() and os.environ.get("CI", "").lower() != "true",
    reason=f"{DEFAULT_PATH} is absent: apt-get install -y {DEBIAN_PACKAGE} (CI installs it and never skips)",
)


def write_idx(path: Path, magic: int, shape: tuple[int, ...], cut: int = 0) -> None:
    """A gzipped idx file of zeros with header ``magic, *shape``; ``cut`` bytes dropped from its end."""
    raw = struct.pack(f">{1 + len(shape)}I", magic, *shape) + bytes(int(np.prod(shape)))
    blob = gzip.compress(raw, compresslevel=1)
    path.write_bytes(blob[: len(blob) - cut])


def fake_folder(folder: Path) -> Path:
    """The four files with valid headers and zero pixels and labels."""
    for images, labels, n in SPLITS.values():
        write_idx(folder / images, 2051, (n, 28, 28))
        write_idx(folder / labels, 2049, (n,))
    return folder


def check(folder: Path) -> None:
    get_dataset("fashion-mnist").check(DataConfig(dataset="fashion-mnist", path=str(folder)))


def assert_names_the_fix(message: str, file: str) -> None:
    assert file in message and DEBIAN_PACKAGE in message
    assert all(name in message for name in FILES)


@real_files
def test_real_files_load_padded_train_and_test_splits():
    ds, data = get_dataset("fashion-mnist"), DataConfig(dataset="fashion-mnist")
    ds.check(data)
    source = ds.load(data, None)
    images, labels = source.images.images, source.images.labels
    assert images.shape == (60_000, 1, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), [6000] * 10) and source.num_classes == 10
    assert images[:, :, :2].max() == 0 and images[:, :, :, -2:].max() == 0  # zero padding
    assert images.mean() > 50  # clothes, not blanks
    ref = ds.reference(data, 3)
    assert ref.images.shape == (10_000, 3, 32, 32)
    assert np.array_equal(np.bincount(ref.labels), [1000] * 10)
    assert not np.array_equal(ref.images[:100, :1], images[:100])


@pytest.mark.slow  # trains the classifier: about 3 min on 2 shared cores
@real_files
def test_fashion_cnn_test_accuracy_is_at_least_90_percent(shared_cache, monkeypatch):
    monkeypatch.setenv("VQFLOW_CACHE", str(shared_cache))
    spec = get_feature_extractor("fashion-cnn").spec()
    info = json.loads((Path(spec.weights_path).parent / "info.json").read_text())
    print(f"fashion-cnn: test accuracy {info['test_accuracy']:.4f}, trained in {info['train_seconds']:.0f} s")
    assert info["test_accuracy"] >= 0.90 and info["num_train"] == 60_000
    assert spec.layer("fid") == "penultimate" and spec.class_layer == "logits"
    test = get_dataset("fashion-mnist").reference(DataConfig(dataset="fashion-mnist"), 1)
    few = ArrayImages(test.images[:500], test.labels[:500])
    feats = extract_features(few, spec, layers=["penultimate", "logits"], progress=False)
    assert feats["penultimate"].shape == (500, 128)
    assert (feats["logits"].argmax(1).numpy() == test.labels[:500]).mean() >= 0.85


def test_training_images_are_the_default_reference():
    data = DataConfig(dataset="mnist5k")
    assert get_dataset("mnist5k").reference(data, 1) is None


def test_fake_folder_passes_the_check(tmp_path):
    check(fake_folder(tmp_path))


def test_missing_file_names_file_package_and_originals(tmp_path):
    fake_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="does not exist") as err:
        check(tmp_path)
    assert_names_the_fix(str(err.value), "t10k-labels-idx1-ubyte.gz")


def test_truncated_file_is_refused(tmp_path):
    fake_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2051, (60_000, 28, 28), cut=100)
    with pytest.raises(ConfigError, match="truncated") as err:
        check(tmp_path)
    assert_names_the_fix(str(err.value), "train-images-idx3-ubyte.gz")


@pytest.mark.parametrize(
    ("file", "magic", "shape", "problem"),
    [
        ("train-labels-idx1-ubyte.gz", 2051, (60_000,), "magic number 2051, expected 2049"),
        ("t10k-images-idx3-ubyte.gz", 2049, (10_000, 28, 28), "magic number 2049, expected 2051"),
        ("train-images-idx3-ubyte.gz", 2051, (59_999, 28, 28), r"shape \(59999, 28, 28\)"),
        ("t10k-labels-idx1-ubyte.gz", 2049, (60_000,), r"shape \(60000,\), expected \(10000,\)"),
    ],
)
def test_mislabelled_file_is_refused(tmp_path, file, magic, shape, problem):
    fake_folder(tmp_path)
    write_idx(tmp_path / file, magic, shape)
    with pytest.raises(ConfigError, match=problem) as err:
        check(tmp_path)
    assert_names_the_fix(str(err.value), file)


def test_run_exits_2_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.run", "--config", "fashion", "--methods", "purr"]
    cmd += ["--set", f"data.path={tmp_path / 'empty'}", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "train-images-idx3-ubyte.gz" in proc.stderr and DEBIAN_PACKAGE in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("own", [True, False])
def test_evaluator_takes_the_data_sets_own_reference(own, toy_latents, tmp_path, monkeypatch):
    """data.reference unset: the evaluator's FID reference is ``DataSet.reference`` (e.g. a test
    split), else the training images."""
    import benchmarks.data.datasets as datasets
    from benchmarks.core.config import load_config
    from benchmarks.evaluation import evaluator as ev

    train, test = (ArrayImages(np.full((4, 1, 32, 32), v, np.uint8), np.arange(4)) for v in (1, 2))
    toy_latents.images = train

    class WithTestSplit:
        def reference(self, data, channels):
            assert channels == toy_latents.tokenizer.in_channels
            return test if own else None

    seen = []
    monkeypatch.setattr(datasets, "get_dataset", lambda name: WithTestSplit())
    monkeypatch.setattr(ev.fidelity, "reference_from_images", lambda images, *a, **k: seen.append(images))
    evaluator = ev.Evaluator(load_config("smoke"), toy_latents, tmp_path / "run", progress=False)
    evaluator._extractor = "stub"
    evaluator.reference()
    assert seen == [test if own else train]
