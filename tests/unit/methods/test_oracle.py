"""Samplers driven by exact-posterior oracles must reproduce a known toy distribution.

With the exact posterior of ``tests.support.oracle`` in place of a trained network, each built-in sampler
must draw the class-conditional pattern frequencies p_{m|y} (total variation < 0.05 over 2000
samples per class, off-pattern grids counting as error), sharpen towards the most likely pattern
as the temperature goes to 0, and run classifier-free guidance as one batched conditional + null
pass per step. These catch wrong time conventions, step grids and CFG placement, which training
losses never reveal.
"""

from __future__ import annotations

import math

import pytest
import torch

import methods
from methods.base import time_grid
from tests.support.oracle import oracle_for, pattern_frequencies, total_variation, toy_mixture

BUILTINS = ["purr", "cfm", "cfm-endpoint", "dfm", "dfm-uniform"]
N_PER_CLASS = 2000
# Euler steps per sampler: the masked DFM needs the most, because positions unmasked in the same
# step are drawn independently and can form a grid that is no pattern (about 1% at 128 steps).
STEPS = {"purr": 32, "cfm": 32, "cfm-endpoint": 32, "dfm": 128, "dfm-uniform": 64}
TV_LIMIT = 0.05

MIXTURE = toy_mixture()


pytestmark = pytest.mark.usefixtures("single_thread")


def sample_per_class(
    name,
    mixture,
    *,
    steps,
    n=N_PER_CLASS,
    classes=None,
    temperature=1.0,
    cfg_scale=1.0,
    seed=0,
    normalized=False,
    **options,
):
    """Sample ``n`` grids for each of ``classes`` (default: all) with the method's oracle;
    returns (SampleOutput, labels)."""
    method = methods.get_method(name)(mixture.codebook, normalized, **options)
    classes = range(mixture.num_classes) if classes is None else classes
    labels = torch.tensor(list(classes)).repeat_interleave(n)
    out = method.sample(
        oracle_for(name, mixture),
        labels,
        mixture.grid,
        steps=steps,
        temperature=temperature,
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(seed),
    )
    return out, labels


def assert_reproduces_mixture(mixture, out, labels):
    for y in range(mixture.num_classes):
        freq = pattern_frequencies(mixture, out.codes, labels, y)
        tv = total_variation(freq, mixture.weights[y])
        assert tv < TV_LIMIT, f"class {y}: frequencies {freq.tolist()} vs {mixture.weights[y].tolist()} (TV {tv:.3f})"


@pytest.mark.parametrize("name", BUILTINS)
def test_sampler_reproduces_class_pattern_frequencies(name):
    out, labels = sample_per_class(name, MIXTURE, steps=STEPS[name])
    assert_reproduces_mixture(MIXTURE, out, labels)


@pytest.mark.parametrize("final_rule", ["argmax", "sample"])
def test_purr_alternative_final_rules_reproduce_frequencies(final_rule):
    out, labels = sample_per_class("purr", MIXTURE, steps=STEPS["purr"], final_rule=final_rule)
    assert_reproduces_mixture(MIXTURE, out, labels)


def test_purr_with_normalized_codebook_reproduces_frequencies():
    mixture = toy_mixture(normalized=True)
    assert torch.allclose(mixture.codebook.norm(dim=1), torch.ones(mixture.num_codes))
    out, labels = sample_per_class("purr", mixture, steps=STEPS["purr"], normalized=True)
    assert_reproduces_mixture(mixture, out, labels)


# Mass on the most likely pattern at tau = 0.05 (p = 0.45 at tau = 1). Only the masked DFM collapses
# fully: purr is a deterministic ODE from z0 ~ N(0, I), and dfm-uniform's not-yet-jumped source
# tokens inform its posterior, so there the source noise still chooses among the patterns.
COLLAPSE = {"purr": 0.6, "dfm": 0.95, "dfm-uniform": 0.6}


@pytest.mark.parametrize("name", sorted(COLLAPSE))
def test_low_temperature_concentrates_on_most_likely_pattern(name):
    out, labels = sample_per_class(name, MIXTURE, steps=32, n=1000, temperature=0.05)
    for y in range(MIXTURE.num_classes):
        freq = pattern_frequencies(MIXTURE, out.codes, labels, y)
        best = int(MIXTURE.weights[y].argmax())
        assert freq[best] >= COLLAPSE[name], f"class {y}: only {freq[best]:.3f} on the most likely pattern {best}"


def prior_position_entropy(mixture, y: int) -> float:
    """Mean over grid positions of H(sum_m p_{m|y} [c^m = k]), computed position by position."""
    h, w = mixture.grid
    total = 0.0
    for i in range(h):
        for j in range(w):
            probs = [0.0] * mixture.num_codes
            for m, pattern in enumerate(mixture.patterns):
                probs[int(pattern[i, j])] += float(mixture.weights[y, m])
            total -= sum(p * math.log(p) for p in probs if p > 0)
    return total / (h * w)


@pytest.mark.parametrize("name", ["purr", "dfm", "dfm-uniform"])
def test_entropy_trace_starts_at_the_prior_and_vanishes(name):
    """At t = 0 every oracle's posterior is the prior p_{m|y}; at the last step it is nearly certain."""
    steps = 40
    out, _ = sample_per_class(name, MIXTURE, steps=steps, n=64)
    assert out.trace["t"] == pytest.approx(time_grid(steps, "cpu")[:-1].tolist())
    assert len(out.trace["entropy"]) == steps
    expected = sum(prior_position_entropy(MIXTURE, y) for y in range(MIXTURE.num_classes)) / MIXTURE.num_classes
    assert out.trace["entropy"][0] == pytest.approx(expected, abs=1e-4)
    assert out.trace["entropy"][-1] < 0.05 * expected


class CallRecorder:
    """Wraps a model and records the labels of every call."""

    def __init__(self, model):
        self.model, self.num_classes, self.labels = model, model.num_classes, []

    def __call__(self, x, t, y):
        assert x.shape[0] == t.shape[0] == y.shape[0]
        self.labels.append(y.clone())
        return self.model(x, t, y)


@pytest.mark.parametrize("name", BUILTINS)
def test_cfg_batches_conditional_and_null_passes(name):
    method = methods.get_method(name)(MIXTURE.codebook)
    labels = torch.tensor([0, 1, 1, 0])
    null = torch.full_like(labels, MIXTURE.num_classes)
    for cfg_scale, expected_labels in [(1.0, labels), (2.5, torch.cat([labels, null]))]:
        recorder = CallRecorder(oracle_for(name, MIXTURE))
        out = method.sample(
            recorder, labels, MIXTURE.grid, steps=5, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(0)
        )
        assert len(recorder.labels) == 5
        assert all(torch.equal(y, expected_labels) for y in recorder.labels)
        assert out.nfe == 5 * len(expected_labels) // len(labels)


@pytest.mark.parametrize("name", BUILTINS)
def test_cfg_favours_patterns_the_class_prefers(name):
    """p_{m|0} / p_m is largest for m0 (0.45 vs 0.275) and smallest for m3 (0.10 vs 0.275): guidance
    w = 3 must raise m0's share above p_{m0|0} and lower m3's."""
    out, labels = sample_per_class(name, MIXTURE, steps=STEPS[name] // 2, n=1000, classes=[0], cfg_scale=3.0)
    freq = pattern_frequencies(MIXTURE, out.codes, labels, 0)
    assert freq[0] > MIXTURE.weights[0, 0] + 0.1 and freq[3] < MIXTURE.weights[0, 3] / 2, freq.tolist()


# ------------------------------------------------------------------ scripted models: schedules and noise


class ScriptedModel:
    """Returns a fixed output (``fill`` everywhere, ``peak`` on channel 0) and records (x, t) per call."""

    def __init__(self, channels: int, fill: float = 0.0, peak: float = 0.0):
        self.channels, self.fill, self.peak, self.num_classes, self.calls = channels, fill, peak, 2, []

    def __call__(self, x, t, y):
        self.calls.append((x.clone(), t.clone()))
        out = torch.full((x.shape[0], self.channels, *x.shape[-2:]), self.fill)
        out[:, 0] = self.peak
        return out


@pytest.mark.parametrize("name", BUILTINS)
def test_sampler_evaluates_model_at_left_end_of_step(name):
    method = methods.get_method(name)(MIXTURE.codebook)
    model = ScriptedModel(method.backbone_io().out_channels)
    steps = 6
    method.sample(
        model, torch.zeros(3, dtype=torch.long), (2, 2), steps=steps, generator=torch.Generator().manual_seed(0)
    )
    grid = time_grid(steps, "cpu")
    assert len(model.calls) == steps
    for i, (_, t) in enumerate(model.calls):
        assert torch.equal(t, torch.full((3,), grid[i].item())), (i, t)


@pytest.mark.parametrize(
    "name, clean_share", [("dfm", lambda t: t), ("dfm-uniform", lambda t: t + (1 - t) / 5)], ids=["dfm", "dfm-uniform"]
)
def test_discrete_samplers_move_positions_on_the_kappa_schedule(name, clean_share):
    """A model certain of code 0 everywhere: a position shows 0 once it has jumped, so before step i
    the share of zeros is kappa(t_i) = t_i (plus (1 - t_i)/K source zeros for the uniform source),
    exactly, because the Euler hazards h/(1 - t) telescope. At the end every position is 0."""
    method = methods.get_method(name)(MIXTURE.codebook)
    model = ScriptedModel(method.backbone_io().out_channels, fill=-30.0, peak=30.0)
    steps = 4
    out = method.sample(
        model, torch.zeros(1000, dtype=torch.long), (4, 4), steps=steps, generator=torch.Generator().manual_seed(0)
    )
    for i, (x, t) in enumerate(model.calls):
        share = (x == 0).double().mean().item()
        assert share == pytest.approx(clean_share(t[0].item()), abs=0.015), f"step {i}, t = {t[0].item()}"
    assert (out.codes == 0).all()


@pytest.mark.parametrize(
    "name, noise_std",
    [("purr", lambda tau: 1.0), ("cfm", lambda tau: tau), ("cfm-endpoint", lambda tau: tau)],
    ids=["purr", "cfm", "cfm-endpoint"],
)
def test_continuous_source_noise_scale(name, noise_std):
    """cfm's temperature is the source-noise scale (z0 ~ N(0, tau^2 I)); purr's acts on the softmax only."""
    method = methods.get_method(name)(MIXTURE.codebook)
    model = ScriptedModel(method.backbone_io().out_channels)
    method.sample(
        model,
        torch.zeros(1000, dtype=torch.long),
        (2, 2),
        steps=2,
        temperature=0.3,
        generator=torch.Generator().manual_seed(0),
    )
    z0 = model.calls[0][0]
    assert z0.shape == (1000, MIXTURE.codebook.shape[1], 2, 2)
    assert abs(z0.mean().item()) < 0.03
    assert z0.std().item() == pytest.approx(noise_std(0.3), rel=0.03)
