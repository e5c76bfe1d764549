"""Checkpoint schedules: every ``checkpoint_every`` steps, or log-spaced (``train.checkpoint_schedule:
log``); the trainer checkpoints and evaluates exactly at ``TrainConfig.checkpoint_steps()``."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.core.config import ConfigError, load_config
from benchmarks.launching.plan import checkpoint_steps
from benchmarks.training.trainer import Trainer


def test_every_schedule_is_unchanged():
    cfg = load_config("smoke", ["train.iterations=50", "train.checkpoint_every=20"])
    assert cfg.train.checkpoint_steps() == [20, 40, 50]
    assert [s for s in range(1, 60) if cfg.train.is_checkpoint_step(s)] == [20, 40] + list(range(50, 60))


def test_convergence_config_has_log_spaced_checkpoints():
    cfg = load_config("convergence")
    steps = cfg.train.checkpoint_steps()
    assert steps == [320, 450, 640, 910, 1280, 1810, 2560, 3620, 5120, 7240, 10240]
    assert checkpoint_steps(cfg) == steps  # --dry-run's plan uses the same schedule
    assert len(steps) >= 10 and all(s % cfg.train.log_every == 0 for s in steps)
    gaps = np.diff(np.log(steps))
    np.testing.assert_allclose(gaps, math.log(32) / 10, rtol=0.1)  # evenly spaced in log-iterations
    iterations = cfg.train.iterations
    assert {iterations // 4, iterations // 2, iterations} <= set(steps)  # the speed-up targets' budgets
    assert [s for s in range(1, iterations + 1) if cfg.train.is_checkpoint_step(s)] == steps
    cells = {(c.steps, c.at) for c in cfg.eval.cells}
    assert {(5, "last"), (10, "last"), (20, "every"), (50, "last")} <= cells
    assert len(cfg.eval.temperatures) >= 4


RECIPE = (
    "batch_size",
    "lr",
    "warmup",
    "lr_schedule",
    "ema_decay",
    "betas",
    "weight_decay",
    "grad_clip",
    "label_dropout",
)


@pytest.mark.parametrize("name", ["convergence", "zloss", "samplers"])
def test_reference_configs_share_the_default_recipe(name):
    """convergence.yaml, zloss.yaml and samplers.yaml copy default.yaml's data, tokenizer, backbone
    and training recipe (their comments say to keep them in step); a re-tuned default must be
    copied to them. The samplers study trains exactly as the convergence reference."""
    default, other = load_config("default"), load_config(name)
    assert (other.data, other.tokenizer, other.backbone) == (default.data, default.tokenizer, default.backbone)
    assert {k: getattr(other.train, k) for k in RECIPE} == {k: getattr(default.train, k) for k in RECIPE}
    if name == "zloss":  # the default run's purr is the z-loss arm: the whole budget and evaluation match
        assert other.train == default.train and other.eval == default.eval
    if name == "samplers":
        assert other.train == load_config("convergence").train


def test_fashion_convergence_is_convergence_on_fashion():
    """fashion-convergence.yaml: the fashion benchmark's data, tokenizer and backbone, trained and
    evaluated as the MNIST-5k convergence reference except for its third temperature curve."""
    fashion, convergence, other = load_config("fashion"), load_config("convergence"), load_config("fashion-convergence")
    assert (other.data, other.tokenizer, other.backbone) == (fashion.data, fashion.tokenizer, fashion.backbone)
    assert other.train == convergence.train
    changed = [(a.temperature, b.temperature) for a, b in zip(other.eval.cells, convergence.eval.cells) if a != b]
    assert changed == [(0.7, 0.5)] and replace(other.eval, cells=convergence.eval.cells) == convergence.eval


@pytest.mark.parametrize("name", ["fashion", "codebook-scaling"])
def test_fashion_configs_share_the_default_recipe(name):
    """fashion.yaml and codebook-scaling.yaml: default.yaml's backbone and recipe on Fashion-MNIST;
    fashion keeps its tokenizer and evaluation (plus cells at other step counts at the last
    checkpoint), the study its d = 4 at K = 16384."""
    default, other = load_config("default"), load_config(name)
    assert other.data.dataset == "fashion-mnist" and other.backbone == default.backbone
    assert {k: getattr(other.train, k) for k in RECIPE} == {k: getattr(default.train, k) for k in RECIPE}
    if name == "fashion":
        extra = [cell for cell in other.eval.cells if cell not in default.eval.cells]
        assert [(cell.at, cell.sampler, cell.temperature) for cell in extra] == [("last", "euler", None)] * 3
        assert other.tokenizer == default.tokenizer and replace(other.eval, cells=default.eval.cells) == default.eval
    else:
        vq = other.tokenizer.vqvae
        assert (vq.codebook_size, vq.code_dim) == (16384, 4)
        assert replace(vq, codebook_size=default.tokenizer.vqvae.codebook_size) == default.tokenizer.vqvae


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["train.checkpoint_schedule=cosine"], "train.checkpoint_schedule must be every or log, got 'cosine'"),
        (["train.checkpoint_schedule=log", "train.num_checkpoints=1"], "train.num_checkpoints must be >= 2"),
        (["train.checkpoint_schedule=log", "train.checkpoint_every=40"], "must be below train.iterations (40)"),
        (
            ["train.checkpoint_schedule=log", "train.num_checkpoints=8"],
            "train.num_checkpoints=8: only 6 distinct multiples of train.log_every=5",
        ),
    ],
)
def test_bad_log_schedules_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as error:
        load_config("smoke", ["train.iterations=40", "train.checkpoint_every=5", *overrides])
    assert needle in str(error.value)


def test_trainer_checkpoints_and_evaluates_on_the_log_schedule(toy_latents, tmp_path):
    cfg = load_config(
        "smoke",
        [
            "backbone=tiny/1",
            "eval.enabled=false",
            "train.batch_size=8",
            "train.log_every=1",
            "train.iterations=16",
            "train.checkpoint_every=2",
            "train.checkpoint_schedule=log",
            "train.num_checkpoints=4",
            "train.keep_checkpoints=10",
            "train.ema_decay=0.9",
        ],
    )
    assert cfg.train.checkpoint_steps() == [2, 4, 8, 16]  # 2 * 8^(k/3)
    evaluated = []
    trainer = Trainer(cfg, "cfm", 0, tmp_path, toy_latents, progress=False)
    trainer.run(on_checkpoint=lambda event: evaluated.append(event.step))
    assert evaluated == [2, 4, 8, 16]
    assert [int(p.stem.split("_")[1]) for p in trainer.checkpoints()] == [2, 4, 8, 16]
