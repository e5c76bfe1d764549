"""The pytest-benchmark performance suite (marker ``bench``; excluded from the default run).

    VQFLOW_BENCH_THREADS=1 .venv/bin/pytest tests/benchmarks -m bench --benchmark-json results/bench/bench.json
    .venv/bin/python -m tools.perf_table results/bench/bench.json

Groups:
* ``train-default``: one training step per method (and the dense-head reference of the
  categorical ones) at the default config (read from default.yaml: DiT mini/2, K = 128, d = 4,
  8x8 codes, batch 32);
* ``train-S2-16k``: the same at DiT-S/2 with K = 16384 on a 32x32 grid, batch
  ``$VQFLOW_BENCH_S2_BATCH`` (default 4; the paper-like batch 32 takes minutes per step on 2 CPU
  cores: measure it with ``python -m tools.profile_step``);
* ``sample-default``: one sampler call per method, 32 samples with 20 Euler steps (no CFG);
* ``tokenizer``: the suite's VQ-VAE (default config) encoding and decoding 256 images 32x32;
* ``extractor``: the evaluator's feature extraction (``mnist-cnn`` through torch-fidelity's loop)
  of 512 images.

Every entry's ``extra_info`` holds ``unit`` and ``items`` (what one round produces, for
throughput = items / median seconds) and ``threads`` (torch intra-op threads); training entries
add ``peak_tensor_mib`` (peak live-tensor
memory of a steady-state step), ``flops_per_step``, ``achieved_gflops``, ``params`` and ``peak_flops``
(the process's matmul peak at the same thread count, for MFU).
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch

from backbones.tokenizers.vqvae import VQVAE, VQVAEConfig
from benchmarks.evaluation import fidelity, mnist_cnn
from benchmarks.storage.atomic import save_torch
from benchmarks.training.utilisation import process_peak_flops
from tools.workloads import DEFAULT, DIT_S2, SampleRun, TrainStep, label, variants

pytestmark = pytest.mark.bench

S2_BATCH = int(os.environ.get("VQFLOW_BENCH_S2_BATCH", "4"))
SAMPLE_BATCH, SAMPLE_STEPS = 32, 20
VARIANTS = variants()
IDS = [label(*v) for v in VARIANTS]


def median_seconds(benchmark) -> float:
    return statistics.median(benchmark.stats.stats.data)


def record(benchmark, unit: str, items: int, **info) -> None:
    """What one round produced (``unit``, ``items``), the thread count and any other details."""
    benchmark.extra_info.update(unit=unit, items=items, threads=torch.get_num_threads(), **info)


def run_train(benchmark, method: str, head: str, workload, rounds: int) -> None:
    run = TrainStep(method, workload, head)
    benchmark.group = f"train-{workload.name}"
    benchmark.pedantic(run.step, rounds=rounds, warmup_rounds=1, iterations=1)
    seconds = median_seconds(benchmark)
    record(
        benchmark,
        "steps",
        1,
        method=method,
        head=head,
        label=label(method, head),
        backbone=workload.backbone,
        codes=workload.codes,
        grid=list(workload.grid),
        batch=workload.batch,
        params=run.params,
        flops_per_step=run.flops,
        achieved_gflops=run.flops / seconds / 1e9,
        peak_flops=process_peak_flops("cpu"),
        peak_tensor_mib=run.peak_memory() / 2**20,
    )


@pytest.mark.parametrize("method,head", VARIANTS, ids=IDS)
def test_train_step_default(benchmark, method, head):
    run_train(benchmark, method, head, DEFAULT, rounds=5)


@pytest.mark.parametrize("method,head", VARIANTS, ids=IDS)
def test_train_step_s2_16k(benchmark, method, head):
    run_train(benchmark, method, head, DIT_S2.with_batch(S2_BATCH), rounds=2)


@pytest.mark.parametrize("method,head", VARIANTS, ids=IDS)
def test_sampling_default(benchmark, method, head):
    run = SampleRun(method, DEFAULT.with_batch(SAMPLE_BATCH), head, steps=SAMPLE_STEPS)
    benchmark.group = "sample-default"
    codes = benchmark.pedantic(run.run, rounds=2, warmup_rounds=1, iterations=1)
    assert codes.shape == (SAMPLE_BATCH, *DEFAULT.grid)
    record(
        benchmark,
        "samples",
        SAMPLE_BATCH,
        method=method,
        head=head,
        label=label(method, head),
        steps=SAMPLE_STEPS,
        nfe=SAMPLE_STEPS,
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """256 random images (N, 1, 32, 32) in [-1, 1]."""
    return torch.rand(256, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_tokenizer(benchmark, images, direction):
    torch.manual_seed(0)
    tokenizer = VQVAE(VQVAEConfig()).eval()
    with torch.no_grad():
        codes = tokenizer.encode(images)
    fn = (lambda: tokenizer.encode(images)) if direction == "encode" else (lambda: tokenizer.decode(codes))
    benchmark.group = "tokenizer"

    def run():
        with torch.no_grad():
            return fn()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    record(benchmark, "images", len(images), grid=list(codes.shape[1:]))


def test_extractor_features(benchmark, tmp_path):
    """The evaluator's feature extraction with an untrained ``mnist-cnn`` of the default
    architecture (the weights do not change the cost)."""
    torch.manual_seed(0)
    net = mnist_cnn.MnistCNN()
    save_torch({"arch": net.arch, "state_dict": net.state_dict()}, tmp_path / "mnist-cnn.pt")
    spec = fidelity.get_extractor(mnist_cnn.NAME, tmp_path / "mnist-cnn.pt")
    images = torch.randint(0, 256, (512, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    benchmark.group = "extractor"
    features = benchmark.pedantic(
        lambda: fidelity.extract_features(images, spec, progress=False), rounds=3, warmup_rounds=1, iterations=1
    )
    assert all(f.shape[0] == len(images) for f in features.values())
    record(benchmark, "images", len(images), extractor=spec.name)
