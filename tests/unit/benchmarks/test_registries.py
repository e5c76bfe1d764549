"""The registries of data sets, tokenizers, feature extractors and metrics: every registered entry
keeps its contract (parametrised over the registries as collected), an unknown name is a config
error listing the registered ones, and no string switch on their names remains outside them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from backbones.tokenizers.pretrained import KINDS
from backbones.tokenizers.vqvae import VQVAEConfig
from benchmarks import run as run_cli_module
from benchmarks.core.config import ConfigError, DataConfig, TokenizerConfig, load_config
from benchmarks.data.datasets import dataset_names, get_dataset
from benchmarks.data.datasets.registry import ImageSource
from benchmarks.data.images import ArrayImages, to_model_range
from benchmarks.data.shards import write_meta, write_shard
from benchmarks.data.tokenizers import get_tokenizer, tokenizer_names
from benchmarks.evaluation import fidelity, mnist_cnn
from benchmarks.evaluation.extractors import ExtractorSpec, feature_extractor_names, get_feature_extractor
from benchmarks.evaluation.metrics import MetricInputs, evaluate, get_metric, metric_columns, metric_names
from tests.support.synthetic_ckpt import small_widths, write_checkpoint

ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "key, value, what, names",
    [
        ("data.dataset", "nope", "data set", dataset_names),
        ("tokenizer.kind", "nope", "tokenizer", tokenizer_names),
        ("eval.feature_extractor", "nope", "feature extractor", feature_extractor_names),
        ("eval.metrics", "[fid, nope]", "metric", metric_names),
    ],
)
def test_unknown_name_exits_2_at_load_listing_registered(capsys, tmp_path, key, value, what, names):
    message = f"{key}: unknown {what} 'nope'; registered: {', '.join(names())}"
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [f"{key}={value}"])
    assert str(err.value) == message
    with pytest.raises(SystemExit) as stop:
        run_cli_module.main(["--config", "smoke", "--set", f"{key}={value}", "--out", str(tmp_path / "run")])
    assert stop.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_registered_names_and_special_values_validate():
    cfg = load_config("smoke", ["eval.feature_extractor=auto", "eval.metrics=[kid, fid]"])
    assert cfg.eval.metrics == ["kid", "fid"] and load_config("smoke").eval.metrics is None
    with pytest.raises(ConfigError, match="eval.metrics must name at least one metric"):
        load_config("smoke", ["eval.metrics=[]"])
    assert metric_columns(["kid", "fid"]) == ["fid", "kid_mean", "kid_std"]  # registration order


REGISTRY_FILES = (
    "benchmarks/data/datasets/",
    "benchmarks/data/tokenizers/",
    "benchmarks/evaluation/extractors/",
    "benchmarks/evaluation/metrics.py",
)


def switches(path: Path) -> list[str]:
    """Lines of ``path`` that compare with a registered data-set, tokenizer or extractor name (a
    literal or an entry's name constant), or list three or more metric columns (``benchmarks``
    only: the reports choose which metrics their tables show)."""
    names = "|".join(re.escape(n) for n in [*dataset_names(), *tokenizer_names(), *feature_extractor_names()])
    compare = re.compile(
        rf"(==|!=)\s*[\"']({names})[\"']|[\"']({names})[\"']\s*(==|!=)|\bin\s*\(\s*[\"']({names})[\"']"
        r"|(==|!=)\s*(mnist_cnn\.NAME|INCEPTION)\b"
    )
    column = re.compile(r"[\"'](" + "|".join(map(re.escape, metric_columns())) + r")[\"']")
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        listed = len(set(column.findall(line))) >= 3 and path.parts[len(ROOT.parts)] == "benchmarks"
        if compare.search(line) or listed:
            found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_string_switch_on_registered_names_outside_them():
    found = [
        hit
        for path in sorted([*(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "reports").rglob("*.py")])
        if not str(path.relative_to(ROOT)).startswith(REGISTRY_FILES)
        for hit in switches(path)
    ]
    assert not found, found


def test_switch_finder_finds_the_removed_switches(tmp_path):
    planted = ROOT / "benchmarks" / "_planted_switch.py"
    planted.write_text(
        'if tokenizer_kind != "vqvae" and dataset == "mnist5k":\n    pass\n'
        'if kind != "vqvae" or name == INCEPTION:\n    pass\n'
        'KEYS = ("fid", "kid_mean", "kid_std", "precision")\n'
        'ok = cfg.data.dataset in ("mnist5k", "imagefolder", "shards")\n'
    )
    try:
        assert [hit.split(":")[1] for hit in switches(planted)] == ["1", "3", "5", "6"]
    finally:
        planted.unlink()


# ----------------------------------------------------------------------------- data sets


def make_image_folder(tmp_path: Path) -> DataConfig:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(
                tmp_path / "images" / cls / f"{i}.png"
            )
    return DataConfig(dataset="imagefolder", path=str(tmp_path / "images"), image_size=16)


def make_shards(tmp_path: Path) -> DataConfig:
    entry = write_shard(tmp_path / "shards", 0, np.zeros((4, 2, 2), dtype=np.int64), np.arange(4) % 2)
    write_meta(tmp_path / "shards", grid=(2, 2), codebook_size=8, num_classes=2, shards=[entry])
    return DataConfig(dataset="shards", path=str(tmp_path / "shards"), image_size=8)


def make_fashion_files(tmp_path: Path) -> DataConfig:
    from tests.unit.benchmarks.test_fashion_mnist import fake_folder

    return DataConfig(dataset="fashion-mnist", path=str(fake_folder(tmp_path)))


DATA_MAKERS = {"imagefolder": make_image_folder, "shards": make_shards, "fashion-mnist": make_fashion_files}
"""Tiny real inputs for the data sets that read ``data.path``; one without a maker and without a
path (e.g. ``mnist5k``) is read as it is."""


def data_config(name: str, tmp_path: Path) -> DataConfig:
    entry = get_dataset(name)
    if name in DATA_MAKERS:
        return DATA_MAKERS[name](tmp_path)
    if entry.path is not None:
        pytest.skip(f"data set {name!r} reads {entry.path} at data.path, which this test cannot make")
    return DataConfig(dataset=name, image_size=getattr(entry, "image_size", 32))


@pytest.mark.parametrize("name", dataset_names())
def test_data_set_contract(name, tmp_path):
    entry, data = get_dataset(name), data_config(name, tmp_path)
    entry.check(data)  # the preflight passes on real files
    assert entry.feature_extractor in feature_extractor_names()
    assert entry.dry_run_classes(DataConfig(dataset=name, num_classes=7)) == 7
    if entry.path is not None and entry.default_path is None:
        with pytest.raises(ConfigError, match=rf"data.path is required for data.dataset='{name}'"):
            entry.check(DataConfig(dataset=name))
    if entry.encoded:
        assert len(entry.open_shards(data)) > 0
        with pytest.raises(NotImplementedError):
            entry.load(data, None)
        return
    source = entry.load(data, None)
    assert isinstance(source, ImageSource) and len(source.images) > 0 and source.id
    assert entry.dry_run_classes(DataConfig(dataset=name)) in (None, source.num_classes)
    for i in (0, len(source.images) - 1):
        image, label = source.images[i]
        assert image.dtype == torch.uint8 and image.shape[0] in (1, 3)
        assert tuple(image.shape[1:]) == (data.image_size, data.image_size)
        assert isinstance(label, int) and 0 <= label < source.num_classes
    assert entry.load(data, None).id == source.id  # a content id: the same data, the same id
    rgb = entry.load(data, 3)
    assert rgb.images[0][0].shape[0] == 3 and (rgb.id != source.id) == (source.images[0][0].shape[0] == 1)


# ----------------------------------------------------------------------------- tokenizers

TINY_VQVAE = VQVAEConfig(codebook_size=8, code_dim=2, downsample=4, channels=8, train_steps=3, batch_size=4)


def tiny_images(channels: int | None) -> ImageSource:
    grey = np.random.default_rng(0).integers(0, 256, (4, 1, 32, 32), dtype=np.uint8)
    return ImageSource(ArrayImages(grey.repeat(channels or 1, axis=1), np.arange(4) % 2), 2, f"tiny-{channels}")


@pytest.mark.filterwarnings("ignore:.*widths differ from the published")
@pytest.mark.parametrize("name", tokenizer_names())
def test_tokenizer_contract(name, tmp_path, isolated_cache):
    kind = get_tokenizer(name)
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(ConfigError, match=rf"tokenizer.ckpt: .*{missing.name}"):
        kind.check(TokenizerConfig(kind=name, ckpt=str(missing)))
    if kind.needs_ckpt:
        with pytest.raises(ConfigError, match=rf"tokenizer.ckpt is required for tokenizer.kind='{name}'"):
            kind.check(TokenizerConfig(kind=name))
    k, d, f = kind.geometry(TokenizerConfig(kind=name, vqvae=TINY_VQVAE))
    assert k >= 2 and d >= 1 and f >= 1
    if name in KINDS:  # a stand-in file in the real container format, reduced widths
        ckpt = tmp_path / KINDS[name].file_name
        write_checkpoint(name, ckpt, **small_widths(name))
    elif kind.needs_ckpt:
        pytest.skip(f"tokenizer {name!r} needs a checkpoint this test cannot make")
    else:
        ckpt = None
    tok = TokenizerConfig(kind=name, ckpt=str(ckpt) if ckpt else None, vqvae=TINY_VQVAE)
    kind.check(tok)
    built = kind.build(tok, tiny_images, progress=False)
    assert built.key and built.tokenizer.downsample == f and len(built.source.images) == 4
    images = torch.stack([built.source.images[i][0] for i in range(4)])
    with torch.no_grad():
        codes = built.tokenizer.encode(to_model_range(images))
        assert codes.shape == (4, 32 // f, 32 // f) and int(codes.max()) < built.tokenizer.codebook_size
        assert built.tokenizer.decode(codes).shape == images.shape
    assert kind.build(tok, tiny_images, progress=False).key == built.key  # a cache key: stable


# ----------------------------------------------------------------------------- feature extractors


def mnist_cnn_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = mnist_cnn.MnistCNN()
    torch.save({"arch": model.arch, "state_dict": model.state_dict()}, tmp_path / "mnist-cnn.pt")
    return tmp_path / "mnist-cnn.pt"


EXTRACTOR_WEIGHTS = {mnist_cnn.NAME: mnist_cnn_weights, "fashion-cnn": mnist_cnn_weights}
"""Weights files for the extractors whose default is slow to make here (training)."""


@pytest.mark.parametrize("name", feature_extractor_names())
def test_feature_extractor_contract(name, tmp_path):
    entry = get_feature_extractor(name)
    try:
        spec = entry.spec(weights=EXTRACTOR_WEIGHTS[name](tmp_path)) if name in EXTRACTOR_WEIGHTS else entry.spec()
    except FileNotFoundError as err:
        pytest.skip(f"feature extractor {name!r} needs weights not on this machine: {err}")
    assert (spec.name, spec.class_layer, spec.channels) == (name, entry.class_layer, entry.channels)
    provided = FEATURE_EXTRACTORS_REGISTRY[name].get_provided_features_list()
    assert set(spec.layers) <= set(provided) and (entry.class_layer is None or entry.class_layer in spec.layers)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (12, 1, 32, 32), dtype=np.uint8))
    features = fidelity.extract_features(images, spec, progress=False, batch_size=6)
    assert set(features) == set(spec.layers)
    for layer, value in features.items():
        assert value.dim() == 2 and len(value) == 12 and torch.isfinite(value).all(), layer


# ----------------------------------------------------------------------------- metrics


def metric_inputs(stats_only: bool = False) -> MetricInputs:
    """Random features in the layers of a 10-class extractor (mnist-cnn's names), 60 per side."""
    spec = ExtractorSpec(mnist_cnn.NAME, "", "0", class_layer="logits")
    gen, ref = (torch.Generator().manual_seed(s) for s in (1, 2))
    generated = {"penultimate": torch.rand(60, 16, generator=gen), "logits": torch.randn(60, 10, generator=gen)}
    real = {"penultimate": torch.rand(60, 16, generator=ref), "logits": torch.randn(60, 10, generator=ref)}
    from torch_fidelity.metric_fid import fid_features_to_statistics

    reference = fidelity.Reference(
        "random", spec.id, fid_features_to_statistics(real["penultimate"]), None if stats_only else real, num_images=60
    )
    return MetricInputs(generated, spec, reference, labels=np.arange(60) % 10, kid_subsets=5)


@pytest.mark.parametrize("name", metric_names())
def test_metric_contract(name):
    metric, inputs = get_metric(name), metric_inputs()
    assert metric.columns and len(set(metric.columns)) == len(metric.columns)
    values = metric.compute(inputs)
    assert set(values) == set(metric.columns)
    assert all(isinstance(float(v), float) and math.isfinite(v) for v in values.values()), values
    assert list(evaluate(inputs, [name])) == list(metric.columns)
    stats_only = evaluate(metric_inputs(stats_only=True), [name])
    assert all(math.isnan(v) for v in stats_only.values()) == metric.needs_reference_features


def test_metric_columns_are_unique_and_each_metric_fills_its_own():
    columns = metric_columns()
    assert len(columns) == len(set(columns)) and columns[:8] == [
        "fid",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "isc",
        "isc_std",
        "class_accuracy",
    ]
    assert list(evaluate(metric_inputs())) == columns


def test_auto_extractor_must_be_registered_for_the_data_set():
    from benchmarks.data.datasets import REGISTRY
    from benchmarks.data.datasets.registry import DataSet
    from benchmarks.launching.preflight import check_inputs

    class Unevaluable(DataSet):
        name, feature_extractor = "unevaluable", "no-such-extractor"

    with REGISTRY.scratch():
        REGISTRY.register(Unevaluable)
        cfg = load_config("smoke", ["data.dataset=unevaluable"])
        with pytest.raises(ConfigError, match="eval.feature_extractor: auto picks 'no-such-extractor'"):
            check_inputs(cfg)
        check_inputs(load_config("smoke", ["data.dataset=unevaluable", "eval.feature_extractor=mnist-cnn"]))
    assert "unevaluable" not in dataset_names()
