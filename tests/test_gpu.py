"""The device paths: fp32 on CPU (never bf16 autocast there), bf16 autocast + TF32 on CUDA."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.config import load_config
from benchmarks.training.trainer import Trainer


def config(device: str):
    return load_config("smoke", ["backbone=tiny/1", "eval.enabled=false", "train.batch_size=8", "train.iterations=4",
                                 "train.checkpoint_every=2", "train.log_every=1", f"train.device={device}"])


def test_cpu_path_is_fp32(toy_latents, tmp_path):
    trainer = Trainer(config("cpu"), "purr", 0, tmp_path, toy_latents, progress=False)
    with trainer.autocast():
        x = torch.randn(2, 4, 8, 8)
        out = trainer.model(x, torch.rand(2), torch.zeros(2, dtype=torch.long))
    assert out.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")
    trainer.run()
    assert all(p.dtype == torch.float32 for p in trainer.ema.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the GPU path (bf16 autocast, TF32) is not exercised")
@pytest.mark.parametrize("method", ["purr", "cfm", "dfm"])
def test_cuda_path_trains_in_bf16_autocast(method, toy_latents, tmp_path):
    trainer = Trainer(config("cuda"), method, 0, tmp_path, toy_latents, progress=False)
    assert trainer.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    with trainer.autocast():
        io = trainer.method.backbone_io()
        x = (torch.randint(0, io.in_channels, (2, 8, 8), device="cuda") if io.input == "tokens"
             else torch.randn(2, io.in_channels, 8, 8, device="cuda"))
        out = trainer.model(x, torch.rand(2, device="cuda"), torch.zeros(2, dtype=torch.long, device="cuda"))
    assert out.dtype == torch.bfloat16
    summary = trainer.run()
    assert summary["step"] == 4
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())
    codes = trainer.method.sample(trainer.ema, torch.arange(4, device="cuda"), (8, 8), steps=4,
                                  generator=torch.Generator("cuda").manual_seed(0)).codes
    assert codes.device.type == "cuda" and int(codes.max()) < trainer.method.num_codes
    assert math.isfinite(trainer.method.loss(trainer.model, codes, torch.arange(4, device="cuda"),
                                             trainer.method.draw(codes, trainer.noise_gen))["loss"].item())
