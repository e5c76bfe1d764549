"""The example plugins of docs/extending.md (``examples/``), each registered and used
through the real code path; their registrations are undone after each test."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from backbones.tokenizers.vqvae import VQVAEConfig
from benchmarks import run as run_cli_module
from benchmarks.core.config import load_config
from benchmarks.data import datasets, tokenizers
from benchmarks.data.latents import prepare_latents
from benchmarks.evaluation import extractors, fidelity, metrics
from benchmarks.launching.plan import latent_shape
from benchmarks.launching.preflight import check_inputs

EXAMPLES = {
    "dataset": "examples.digits_dataset",
    "tokenizer": "examples.patch_levels_tokenizer",
    "extractor": "examples.random_cnn_extractor",
    "metric": "examples.density_coverage_metric",
}
FAST = [
    "train.iterations=20",
    "train.checkpoint_every=10",
    "train.log_every=5",
    "eval.temperatures=[]",
    "eval.num_samples=20",
    "eval.batch_size=20",
    "eval.kid_subsets=2",
    "eval.grid_samples=4",
]


@pytest.fixture
def plugin(isolated_cache):
    """``plugin(kind)`` imports that example (afresh, so it registers); every registration made
    during the test is undone afterwards."""

    def forget():
        for name in EXAMPLES.values():
            sys.modules.pop(name, None)

    forget()
    with contextlib.ExitStack() as stack:
        for package in (datasets, tokenizers, extractors, metrics):
            stack.enter_context(package.REGISTRY.scratch())
        yield lambda kind: importlib.import_module(EXAMPLES[kind])
    forget()


def test_digits_dataset(plugin):
    sklearn = pytest.importorskip("sklearn.datasets", reason="the example reads scikit-learn's load_digits")
    plugin("dataset")
    cfg = load_config("smoke", ["data.dataset=digits", "tokenizer.vqvae.train_steps=5"])
    check_inputs(cfg)
    assert latent_shape(cfg).num_classes == 10
    tiny = VQVAEConfig(codebook_size=8, code_dim=2, downsample=4, channels=8, train_steps=5, batch_size=8)
    space = prepare_latents("digits", None, 32, "vqvae", None, tiny, progress=False)
    target = sklearn.load_digits().target
    assert len(space.shards) == len(space.images) == len(target) == 1797 and space.num_classes == 10
    image, label = space.images[5]
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32) and label == target[5]
    pixels = np.round(sklearn.load_digits().images[5] * (255 / 16)).astype(np.uint8)  # 8x8, each repeated 4x4
    assert np.array_equal(image[0].numpy(), pixels.repeat(4, 0).repeat(4, 1))
    assert space.info["dataset"] == "digits" and space.info["data_id"].startswith("digits-1ch-")


def test_patch_levels_tokenizer(plugin):
    plugin("tokenizer")
    cfg = load_config("smoke", ["tokenizer.kind=patch-levels"])
    check_inputs(cfg)
    shape = latent_shape(cfg)
    assert (shape.codebook_size, shape.code_dim, shape.grid) == (16, 1, (8, 8))
    space = prepare_latents("mnist5k", None, 32, "patch-levels", None, VQVAEConfig(), progress=False)
    assert space.shards.grid == (8, 8) and space.shards.codebook_size == 16 and space.info["recon_mse"] < 0.2
    codes, _ = space.shards.batch(torch.arange(4))
    assert space.tokenizer.decode(codes).shape == (4, 1, 32, 32)
    again = prepare_latents("shards", space.info["shard_dir"], 32, "patch-levels", None, VQVAEConfig(), progress=False)
    assert again.images is None and torch.equal(again.tokenizer.codebook, space.tokenizer.codebook)


def test_random_cnn_extractor(plugin, tmp_path, monkeypatch):
    from benchmarks.evaluation.evaluator import extractor_for

    plugin("extractor")
    cfg = load_config("smoke", ["eval.feature_extractor=random-cnn"])
    spec = extractor_for(cfg)
    assert spec.name == "random-cnn" and spec.class_layer is None and spec.layers == ["logits", "pool"]
    monkeypatch.setenv("VQFLOW_CACHE", str(tmp_path / "elsewhere"))
    assert extractor_for(cfg).id == spec.id  # the same seed gives the same weights file anywhere
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (80, 3, 32, 32), dtype=np.uint8))
    reference = fidelity.reference_from_images(images[:40], spec, "random", progress=False)
    out = fidelity.compute_metrics(
        images[40:], reference, spec, labels=np.arange(40) % 10, progress=False, kid_subsets=2
    )
    assert math.isfinite(out["fid"]) and math.isnan(out["class_accuracy"])  # no class layer


def test_density_coverage_metric_adds_its_columns_to_a_row(plugin, toy_latents, tmp_path):
    """The evaluator's row writing with the plugin registered: ``density`` and ``coverage`` are
    columns of metrics.csv, after the built-ins."""
    from benchmarks.evaluation.evaluator import Cell, Evaluator

    plugin("metric")
    cfg = load_config("smoke", ["eval.metrics=[fid, density_coverage]"])
    assert metrics.metric_columns()[-2:] == ["density", "coverage"]
    spec = extractors.get_feature_extractor("mnist-cnn").spec(weights=_mnist_cnn_weights(tmp_path))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (60, 1, 32, 32), dtype=np.uint8))
    evaluator = Evaluator(cfg, toy_latents, tmp_path / "run", progress=False)
    evaluator._extractor, evaluator._reference = (
        spec,
        fidelity.reference_from_images(images, spec, "toy", progress=False),
    )
    features = fidelity.extract_features(images[:30], spec, progress=False)
    event = SimpleNamespace(
        method=SimpleNamespace(name="purr"),
        seed=0,
        step=10,
        images_seen=320,
        train_flops=1.0,
        train_wall_s=1.0,
        params=1,
    )
    shard = {"features": features, "grid": images[:4], "traces": [], "nfe_total": 8 * 30}
    shard.update(sample_wall_s=0.3, sample_cpu_s=0.3)
    evaluator.record(event, Cell(8, 1.0, 1.0, 30), [shard], 0.0)
    row = pd.read_csv(tmp_path / "run" / "metrics.csv").iloc[0]
    # the generated half are reference points: they cover at least themselves, each inside its own ball
    assert row["coverage"] >= 0.5 and row["density"] >= 1 / 5 and math.isfinite(row["fid"])
    assert math.isnan(row["kid_mean"])  # not in eval.metrics: an empty cell
    same = fidelity.metrics_from_features(
        fidelity.extract_features(images, spec, progress=False),
        evaluator._reference,
        spec,
        metrics=["density_coverage"],
    )
    assert same["coverage"] == 1.0  # every reference point is inside its own ball


def _mnist_cnn_weights(tmp_path):
    from benchmarks.evaluation import mnist_cnn

    torch.manual_seed(0)
    model = mnist_cnn.MnistCNN()
    torch.save({"arch": model.arch, "state_dict": model.state_dict()}, tmp_path / "mnist-cnn.pt")
    return tmp_path / "mnist-cnn.pt"


def test_plugins_flag_brings_every_kind(plugin, capsys):
    modules = ",".join(EXAMPLES.values())
    assert run_cli_module.main(["--plugins", modules, "--list"]) == 0
    out = capsys.readouterr().out
    for line in ["digits ", "patch-levels ", "random-cnn ", "density_coverage density, coverage"]:
        assert line in out, out
    assert (
        run_cli_module.main(
            [
                "--plugins",
                modules,
                "--config",
                "smoke",
                "--dry-run",
                "--set",
                "data.dataset=digits",
                "tokenizer.kind=patch-levels",
                "eval.feature_extractor=random-cnn",
            ]
        )
        == 0
    )
    assert "tokenizer patch-levels (K=16, d=1); latent grid 8x8; 10 classes" in capsys.readouterr().out
    from benchmarks.launching.launch import plugin_modules

    assert set(EXAMPLES.values()) <= set(plugin_modules(["purr"]))  # a submitit job imports them too


@pytest.mark.slow
def test_a_job_with_every_example_plugin(plugin, tmp_path):
    """One purr job (train, evaluate two checkpoints) on the digits, with the patch-levels
    tokenizer, the random-cnn extractor and density/coverage."""
    from benchmarks.launching.jobs import run_job

    for kind in EXAMPLES:
        plugin(kind)
    cfg = load_config(
        "smoke", [*FAST, "data.dataset=digits", "tokenizer.kind=patch-levels", "eval.feature_extractor=random-cnn"]
    )
    run_job(cfg, "purr", 0, tmp_path / "run", progress=False)
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(rows["step"]) == [10, 20] and rows[["fid", "density", "coverage", "isc_std"]].notna().all().all()
    assert set(rows["tokenizer"]) == {"patch-levels"} and rows["feature_extractor"].str.startswith("random-cnn:").all()
    floor = json.loads((tmp_path / "run" / "tokenizer_floor.json").read_text())
    assert floor["ref_stats"].startswith("digits-") and math.isfinite(floor["coverage"])
