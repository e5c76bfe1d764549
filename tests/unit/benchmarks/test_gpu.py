"""The device paths: fp32 on CPU (never bf16 autocast there), bf16 autocast + TF32 on CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.core.config import load_config
from benchmarks.training.trainer import Trainer


def config(device: str, iterations: int = 4):
    return load_config(
        "smoke",
        [
            "backbone=tiny/1",
            "eval.enabled=false",
            "train.batch_size=8",
            f"train.iterations={iterations}",
            "train.checkpoint_every=2",
            "train.log_every=1",
            f"train.device={device}",
        ],
    )


def test_cpu_path_is_fp32(toy_latents, tmp_path):
    trainer = Trainer(config("cpu"), "purr", 0, tmp_path, toy_latents, progress=False)
    with trainer.autocast():
        x = torch.randn(2, 4, 8, 8)
        out = trainer.model(x, torch.rand(2), torch.zeros(2, dtype=torch.long))
    assert out.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")
    trainer.run()
    assert all(p.dtype == torch.float32 for p in trainer.ema.parameters())


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine: the GPU path (bf16 autocast, TF32) is not exercised",
)
@pytest.mark.parametrize("method", ["purr", "cfm", "dfm"])
def test_cuda_path_trains_in_bf16_autocast(method, toy_latents, tmp_path):
    trainer = Trainer(config("cuda"), method, 0, tmp_path, toy_latents, progress=False)
    assert trainer.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    with trainer.autocast():
        io = trainer.method.backbone_io()
        x = (
            torch.randint(0, io.in_channels, (2, 8, 8), device="cuda")
            if io.input == "tokens"
            else torch.randn(2, io.in_channels, 8, 8, device="cuda")
        )
        out = trainer.model(x, torch.rand(2, device="cuda"), torch.zeros(2, dtype=torch.long, device="cuda"))
    assert out.dtype == torch.bfloat16
    summary = trainer.run()
    assert summary["step"] == 4
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())
    codes = trainer.method.sample(
        trainer.ema, torch.arange(4, device="cuda"), (8, 8), steps=4, generator=torch.Generator("cuda").manual_seed(0)
    ).codes
    assert codes.device.type == "cuda" and int(codes.max()) < trainer.method.num_codes
    assert math.isfinite(
        trainer.method.loss(
            trainer.model, codes, torch.arange(4, device="cuda"), trainer.method.draw(codes, trainer.noise_gen)
        )["loss"].item()
    )


# ----------------------------------------------------------------------------- CPU stand-ins for the GPU path


def test_checkpoint_loads_onto_another_device(toy_latents, tmp_path):
    """On a GPU the old ``torch.load(map_location=cuda)`` moved the saved CPU RNG states to the GPU
    and ``set_state`` refused them. The ``meta`` device stands in for the GPU: loading while the
    trainer's device is ``meta`` must restore the weights, the optimizer and every RNG state."""
    saved = Trainer(config("cpu", iterations=2), "purr", 0, tmp_path, toy_latents, progress=False)
    saved.run()
    state = torch.load(saved.checkpoints()[-1], weights_only=True)

    torch.manual_seed(123)
    resumed = Trainer(config("cpu"), "purr", 0, tmp_path, toy_latents, progress=False)
    resumed.device = torch.device("meta")
    resumed.load_checkpoint(saved.checkpoints()[-1])
    assert resumed.step == 2
    assert torch.equal(resumed.data_gen.get_state(), state["rng"]["data"])
    assert torch.equal(resumed.noise_gen.get_state(), state["rng"]["noise"])
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    for name, value in resumed.model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, state["model"][name]), name
    moments = resumed.optimizer.state_dict()["state"][0]["exp_avg"]
    assert moments.device.type == "cpu" and torch.equal(moments, state["optimizer"]["state"][0]["exp_avg"])


def test_nearest_codes_are_float32_under_bf16_autocast():
    """The paper's codebook geometry (K = 16384, d = 4), queries 1% away from a code: inside the
    evaluator's bf16 autocast the search must return the float32 codes (bf16 changed 4.8%)."""
    from backbones.tokenizers.base import nearest_codes

    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(16384, 4, generator=gen)
    true = torch.randint(0, 16384, (4, 32, 32), generator=gen)
    z = codebook[true].permute(0, 3, 1, 2)
    z = z + 0.01 * z.abs().mean() * torch.randn(z.shape, generator=gen)
    want = nearest_codes(z, codebook, normalized=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nearest_codes(z, codebook, normalized=False)
        got_cosine = nearest_codes(z, codebook, normalized=True)
    assert (got != want).float().mean().item() == 0.0
    assert torch.equal(got_cosine, nearest_codes(z, codebook, normalized=True))
    assert (want == true).float().mean().item() > 0.99


def test_gpu_check_refuses_without_a_gpu():
    """``python -m benchmarks.gpu_check`` measures the CUDA path; without a GPU it says so and exits 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "needs a GPU, but torch.cuda.is_available() is False" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: gpu_check needs one")
def test_gpu_check_passes_on_a_gpu(tmp_path):
    """The whole GPU check (under 8 minutes on one GPU): resume works, codes do not change under autocast."""
    import json

    from benchmarks.gpu_check import main

    assert main(["--json", str(tmp_path / "gpu.json")]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["nearest_code_mismatch"] == 0 and report["resume"]["ok"] and report["wall_s"] < 480
