"""The plugin contract, checked for every registered method (a new plugin is tested on registration).

Each method runs against the real tiny DiT built from its ``backbone_io()``: draws are batch-first,
the loss is a finite scalar that is deterministic given the draws and trains every parameter, and
the sampler returns in-range code grids with an honest NFE count and a per-step trace.
"""

from __future__ import annotations

import pytest
import torch

import methods
from backbones.dit import build_dit
from methods.base import Method, SampleNoise, SampleOutput, time_grid

K, D, NUM_CLASSES, GRID, B = 16, 4, 3, (4, 4), 3
ALL = methods.method_names()
DOCUMENTED_OPTIONS = {
    "purr": ["z_loss", "final_rule"],
    "cfm": [],
    "cfm-endpoint": [],
    "dfm": ["z_loss", "masked_only"],
    "dfm-uniform": ["z_loss"],
}


def build(name: str, seed: int = 0):
    """The method on a random (K, D) codebook, and a tiny DiT whose every parameter is perturbed
    away from DiT's zero init, so that every parameter gets a gradient."""
    torch.manual_seed(seed)
    method = methods.get_method(name)(torch.randn(K, D))
    model = build_dit("tiny/1", method.backbone_io(), grid=GRID, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return method, model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(K, (B, *GRID), generator=g), torch.randint(NUM_CLASSES + 1, (B,), generator=g)


def test_builtins_are_registered():
    assert set(DOCUMENTED_OPTIONS) <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_method_declares_its_identity_and_backbone_io(name):
    cls = methods.get_method(name)
    assert issubclass(cls, Method) and cls.name == name
    assert isinstance(cls.temperature_meaning, str) and cls.temperature_meaning
    io = cls(torch.randn(K, D)).backbone_io()
    assert io.input in ("embedding", "tokens")
    if io.input == "embedding":
        assert io.in_channels == D
    else:
        assert io.in_channels >= K  # a vocabulary that holds every code (and maybe extra ids)
    assert io.out_channels > 0


@pytest.mark.parametrize("name", sorted(DOCUMENTED_OPTIONS))
def test_option_names_are_the_documented_ones(name):
    assert methods.get_method(name).option_names() == DOCUMENTED_OPTIONS[name]


@pytest.mark.parametrize("name", ALL)
def test_draw_is_batch_first_and_reproducible(name):
    method, _ = build(name)
    codes, _ = batch()
    draws = method.draw(codes, torch.Generator().manual_seed(5))
    assert draws and all(v.shape[0] == B for v in draws.values()), {k: v.shape for k, v in draws.items()}
    again = method.draw(codes, torch.Generator().manual_seed(5))
    assert draws.keys() == again.keys() and all(torch.equal(draws[k], again[k]) for k in draws)


@pytest.mark.parametrize("name", ALL)
def test_loss_is_deterministic_finite_and_trains_every_param(name):
    method, model = build(name)
    codes, labels = batch()
    draws = method.draw(codes, torch.Generator().manual_seed(1))
    out = method.loss(model, codes, labels, draws)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    for key, value in out.items():
        assert key == "loss" or not value.requires_grad, f"diagnostic {key!r} is not detached"
    assert method.loss(model, codes, labels, draws)["loss"].item() == out["loss"].item()
    out["loss"].backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    zero = [n for n, p in params.items() if not p.grad.any()]
    assert len(zero) <= 0.1 * len(params), f"zero gradient for {zero}"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sample_returns_code_grids_nfe_and_a_per_step_trace(name, cfg_scale):
    method, model = build(name)
    _, labels = batch()
    steps = 3
    out = method.sample(
        model,
        labels,
        GRID,
        steps=steps,
        temperature=0.9,
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(2),
    )
    assert isinstance(out, SampleOutput)
    assert out.codes.dtype == torch.int64 and out.codes.shape == (B, *GRID)
    assert out.codes.min() >= 0 and out.codes.max() < K
    assert out.nfe == steps * (1 if cfg_scale == 1.0 else 2)
    assert out.trace["t"] == pytest.approx(time_grid(steps, "cpu")[:-1].tolist())
    assert all(len(v) == steps for v in out.trace.values()), {k: len(v) for k, v in out.trace.items()}
    again = method.sample(
        model,
        labels,
        GRID,
        steps=steps,
        temperature=0.9,
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(out.codes, again.codes)


@pytest.mark.parametrize("name", ALL)
def test_per_sample_noise_makes_samples_independent_of_the_batch(name):
    """With one seeded stream per sample, sampling 6 samples at once or as batches of 2 and 4 (as
    different ranks or batch sizes would) gives the same codes: a sample's noise is its own."""
    method, model = build(name)
    labels, seeds = torch.arange(6) % NUM_CLASSES, [101 + i for i in range(6)]
    options = dict(steps=3, temperature=0.9, cfg_scale=2.0)
    whole = method.sample(model, labels, GRID, generator=SampleNoise.per_sample(seeds, "cpu"), **options)
    parts = [
        method.sample(model, labels[s], GRID, generator=SampleNoise.per_sample(seeds[s], "cpu"), **options)
        for s in (slice(0, 2), slice(2, 6))
    ]
    assert torch.equal(whole.codes, torch.cat([p.codes for p in parts]))
    with pytest.raises(ValueError, match="6 streams for a batch of 2"):
        method.sample(model, labels[:2], GRID, generator=SampleNoise.per_sample(seeds, "cpu"), **options)


@pytest.mark.parametrize("name", ALL)
def test_sampler_rejects_bad_arguments(name):
    method, model = build(name)
    _, labels = batch()
    with pytest.raises(ValueError, match="steps"):
        method.sample(model, labels, GRID, steps=0)
    with pytest.raises(ValueError, match=f"{name}.*temperature"):
        method.sample(model, labels, GRID, steps=2, temperature=0.0)


def test_purr_rejects_an_unknown_final_rule_by_name():
    with pytest.raises(ValueError, match="final_rule.*'closest'"):
        methods.get_method("purr")(torch.randn(K, D), final_rule="closest")
