"""The sampler contract, checked for every registered sampler with every method that supports it
(a new sampler is tested the moment it is registered), and the example sampler plugin.

Each (sampler, method) pair runs on the tiny DiT of ``test_contract``: in-range code grids, an NFE
equal to the network passes actually made, no evaluation at t = 1, one trace entry per step at the
sampler's grid times (per evaluation, at its time, for an adaptive sampler), and per-sample seeds
that make a sample independent of the batch it is drawn in (unless the sampler declares
``batch_independent = False``). Parametrised samplers are named by specs whose label round-trips.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import examples.cosine_grid_euler  # noqa: F401  (registers euler-cosine: the example meets the same contract)
import methods
from methods.base import SampleNoise, SampleOutput, passes_per_step
from methods.sampling import Euler, Sampler
from tests.unit.methods.test_contract import GRID, NUM_CLASSES, K, build

B = 3
PAIRS = [
    (s, m)
    for s in methods.sampler_names()
    for m in methods.method_names()
    if methods.get_sampler(s).supports(methods.get_method(m))
]
BATCH_INDEPENDENT = [(s, m) for s, m in PAIRS if methods.get_sampler(s).batch_independent]


class PassCounter:
    """Counts the samples the model's forward passes see (a CFG pass of 2B counts twice) and
    records the time of every call."""

    def __init__(self, model, batch: int):
        self.batch, self.seen, self.times = batch, 0, []
        model.register_forward_hook(self.hook)

    def hook(self, module, args, out):
        x, t = args[0], args[1]
        self.seen += x.shape[0]
        self.times.append(t[0].item())

    @property
    def passes(self) -> float:
        return self.seen / self.batch


def labels(n: int = B):
    return torch.arange(n) % (NUM_CLASSES + 1)  # includes the null label


def test_euler_and_the_example_are_registered():
    assert {"euler", "euler-cosine"} <= set(methods.sampler_names())


@pytest.mark.parametrize("name", methods.sampler_names())
def test_sampler_declares_its_identity_and_maths(name):
    cls = methods.get_sampler(name)
    assert issubclass(cls, Sampler) and cls.name == name
    doc = cls.__dict__.get("__doc__") or ""
    assert "NFE" in doc, f"sampler {name!r} must state its maths and NFE per step in its own docstring"


@pytest.mark.parametrize("name", methods.method_names())
def test_every_method_runs_under_euler(name):
    """The evaluator samples with ``euler``: every method must support it."""
    assert "euler" in methods.get_method(name).supported_samplers()


@pytest.mark.parametrize("sampler, name", PAIRS)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sample_gives_code_grids_honest_nfe_and_a_trace(sampler, name, cfg_scale):
    method, model = build(name)
    counter = PassCounter(model, B)
    steps = 4
    options = dict(steps=steps, temperature=0.9, cfg_scale=cfg_scale, sampler=sampler)
    out = method.sample(model, labels(), GRID, generator=torch.Generator().manual_seed(2), **options)
    assert isinstance(out, SampleOutput)
    assert out.codes.dtype == torch.int64 and out.codes.shape == (B, *GRID)
    assert out.codes.min() >= 0 and out.codes.max() < K
    runner = methods.build_sampler(sampler)
    assert out.sampler == runner.label
    assert out.nfe == counter.passes
    assert min(counter.times) >= 0.0 and max(counter.times) < 1.0, "the network was evaluated at t = 1"
    if runner.adaptive:  # evaluations counted during the run; one trace entry per evaluation, at its time
        assert runner.evaluations(steps) is None
        assert len(counter.times) * passes_per_step(cfg_scale) == out.nfe
        assert out.trace["t"] == pytest.approx(counter.times)
        entries = len(counter.times)
    else:
        assert out.nfe == runner.evaluations(steps) * passes_per_step(cfg_scale)
        assert out.trace["t"] == pytest.approx(runner.times(steps, "cpu")[:-1].tolist())
        entries = steps
    assert all(len(v) == entries for v in out.trace.values()), {k: len(v) for k, v in out.trace.items()}
    again = method.sample(model, labels(), GRID, generator=torch.Generator().manual_seed(2), **options)
    assert torch.equal(out.codes, again.codes) and out.trace == again.trace


@pytest.mark.parametrize("sampler, name", BATCH_INDEPENDENT)
def test_per_sample_seeds_make_a_sample_independent_of_the_batch(sampler, name):
    """3 samples in one batch or one by one, each with its own seed: the same codes (for every
    sampler that does not declare ``batch_independent = False``)."""
    method, model = build(name)
    seeds = [7, 8, 9]
    options = dict(steps=3, temperature=0.9, cfg_scale=2.0, sampler=sampler)
    whole = method.sample(model, labels(), GRID, generator=SampleNoise.per_sample(seeds, "cpu"), **options)
    alone = [
        method.sample(
            model, labels()[i : i + 1], GRID, generator=SampleNoise.per_sample(seeds[i : i + 1], "cpu"), **options
        )
        for i in range(B)
    ]
    assert torch.equal(whole.codes, torch.cat([a.codes for a in alone]))


def test_only_adaptive_samplers_may_depend_on_the_batch():
    """Batch dependence is declared, and only the step-size control of an adaptive solver may need it."""
    dependent = [s for s in methods.sampler_names() if not methods.get_sampler(s).batch_independent]
    assert dependent == ["dopri5"]
    assert all(methods.get_sampler(s).adaptive for s in dependent)


@pytest.mark.parametrize("name", methods.sampler_names())
def test_sampler_label_is_a_spec_that_rebuilds_it(name):
    """``label`` spells out every parameter (defaults included) and parses back to the same sampler."""
    runner = methods.build_sampler(name)
    defaults = type(runner).parameter_defaults()
    assert runner.parameters == defaults
    assert runner.label == name if not defaults else runner.label.startswith(f"{name}:")
    again = methods.build_sampler(runner.label)
    assert type(again) is type(runner) and again.parameters == runner.parameters and again.label == runner.label


@pytest.mark.parametrize("name", methods.method_names())
def test_unknown_or_unsupported_sampler_names_the_method(name):
    method, model = build(name)
    message = f"method '{name}' has no sampler 'no-such'; its samplers: {', '.join(method.supported_samplers())}"
    with pytest.raises(ValueError, match=re.escape(message)):
        method.sample(model, labels(), GRID, steps=2, sampler="no-such")
    restricted = type("Restricted", (type(method),), {"name": f"{name}-restricted", "samplers": ()})
    with pytest.raises(ValueError, match=f"method '{name}-restricted' has no sampler 'euler'"):
        restricted(method.codebook).sample(model, labels(), GRID, steps=2)


def test_sampler_registry_lookups_and_registration_errors():
    message = f"unknown sampler 'no-such'; registered samplers: {', '.join(methods.sampler_names())}"
    with pytest.raises(KeyError, match=re.escape(message)):
        methods.get_sampler("no-such")
    with pytest.raises(ValueError, match="a sampler named 'euler' is already registered"):
        methods.register_sampler(type("OtherEuler", (Euler,), {"name": "euler"}))
    with pytest.raises(TypeError, match="must set a class attribute `name`"):
        methods.register_sampler(type("Nameless", (Euler,), {"name": ""}))
    assert methods.register_sampler(Euler) is Euler  # registering the same class again is a no-op


def test_the_loop_rejects_a_grid_that_does_not_run_from_0_to_1():
    class ShortGrid(Euler):
        name = "short-grid"

        def times(self, steps, device):
            return super().times(steps, device) * 0.5

    method, model = build("cfm")
    with pytest.raises(ValueError, match="'short-grid': times\\(2\\) must be 0 = t_0 < ... < t_2 = 1"):
        ShortGrid().run(
            method,
            model,
            labels(),
            GRID,
            steps=2,
            temperature=1.0,
            cfg_scale=1.0,
            noise=SampleNoise.shared(None, B, "cpu"),
        )


# ------------------------------------------------------------------ the example plugin


@pytest.mark.parametrize("name", methods.method_names())
def test_example_sampler_runs_wherever_euler_does(name):
    assert ("euler-cosine", name) in PAIRS
    cls = methods.get_method(name)
    assert methods.get_sampler("euler-cosine").supports(cls) == methods.get_sampler("euler").supports(cls)


@pytest.mark.parametrize("name", methods.method_names())
def test_example_sampler_steps_on_the_cosine_grid(name):
    """The model is evaluated at t_i = (1 - cos(pi i / N)) / 2, not at Euler's i / N, and the samples
    differ from Euler's with the same noise. 64 samples: the tiny model's cfm velocity barely depends
    on t, so its codes move only where z ends near a boundary between codes (about 2% of positions)."""
    steps, n = 4, 64
    grids = {
        "euler": [i / steps for i in range(steps)],
        "euler-cosine": [(1 - math.cos(math.pi * i / steps)) / 2 for i in range(steps)],
    }
    codes = {}
    for sampler, expected in grids.items():
        method, model = build(name)
        counter = PassCounter(model, n)
        out = method.sample(
            model,
            labels(n),
            GRID,
            steps=steps,
            temperature=0.9,
            sampler=sampler,
            generator=torch.Generator().manual_seed(3),
        )
        assert out.trace["t"] == pytest.approx(expected, abs=1e-6)
        assert counter.times == pytest.approx(expected, abs=1e-6)
        codes[sampler] = out.codes
    assert not torch.equal(codes["euler"], codes["euler-cosine"])


# ------------------------------------------------------------------ parametrised samplers: specs and labels


def test_a_spec_sets_parameters_and_the_label_spells_out_all():
    runner = methods.build_sampler("dopri5:rtol=1e-4, atol=1e-5")
    assert (runner.rtol, runner.atol) == (1e-4, 1e-5)
    assert runner.label == "dopri5:rtol=0.0001,atol=1e-05"
    assert methods.build_sampler("dopri5:atol=1e-5").label == "dopri5:rtol=0.001,atol=1e-05"  # defaults spelt out
    assert methods.build_sampler("dopri5:rtol=1e-4", atol=1e-2, rtol=1e-2).label == "dopri5:rtol=0.01,atol=0.01"
    assert methods.build_sampler("maskgit:choice_temperature=2").label == "maskgit:choice_temperature=2.0"
    assert methods.build_sampler("euler").label == "euler" and methods.build_sampler("euler:").label == "euler"
    assert methods.build_sampler(runner) is runner


@pytest.mark.parametrize(
    "spec, message",
    [
        ("dopri5:tol=1e-3", "sampler 'dopri5' has no parameter 'tol'; its parameters: rtol, atol"),
        ("euler:steps=3", "sampler 'euler' has no parameter 'steps'; its parameters: none"),
        ("dopri5:rtol=small", "sampler 'dopri5': parameter 'rtol' takes a float, got 'small'"),
        ("dopri5:rtol", "sampler spec 'dopri5:rtol': expected key=value, got 'rtol'"),
        ("dopri5:rtol=1e-3,rtol=1e-4", "parameter 'rtol' given twice"),
        ("dopri5:rtol=0", "rtol and atol must be > 0"),
    ],
)
def test_bad_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        methods.build_sampler(spec)


def test_methods_take_specs_and_instances_and_record_the_label():
    method, model = build("cfm")
    options = dict(steps=2, temperature=0.9, generator=torch.Generator().manual_seed(0))
    out = method.sample(model, labels(), GRID, sampler="dopri5:rtol=1e-2,atol=1e-2", **options)
    assert out.sampler == "dopri5:rtol=0.01,atol=0.01"
    runner = methods.build_sampler("heun")
    assert method.sample(model, labels(), GRID, sampler=runner, **options).sampler == "heun"
    assert method.sample(model, labels(), GRID, **options).sampler == "euler"
    with pytest.raises(ValueError, match="method 'cfm' has no sampler 'maskgit'"):
        method.sample(model, labels(), GRID, sampler="maskgit:choice_temperature=1", **options)
