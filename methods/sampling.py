"""Samplers: the one loop that turns a method's source noise into code grids, and their registry.

A sampler integrates a method's flow from t = 0 (source) to t = 1 (data) on a time grid
0 = t_0 < t_1 < ... < t_N = 1 (N = ``steps``). The loop is ``Sampler.run``, shared by every
sampler and method:

    s_0             = method.initial_state(ctx)                     from ctx.noise, at temperature tau
    s_{i+1}, trace_i = sampler.step(method, ctx, s_i, t_i, t_{i+1})  i = 0 .. N-1
    codes           = method.final_codes(ctx, s_N)                  (B, h, w) int64 in [0, K)

The steps are ``Sampler.solve``'s grid loop, which an adaptive sampler replaces. The state s is
the method's own (a point z (B, d, h, w) on a Gaussian path, a token grid (B, h, w) on a mixture
path); a sampler only hands it between the method's hooks. A sampler
supplies its grid (``times``), its step (calling the hooks it needs) and its network evaluations
per sample (``evaluations``): NFE = evaluations(N) x passes_per_step(w), where a guided
evaluation (w != 1) is one batched pass of the conditional and null inputs, i.e. two passes.

Randomness: every random number comes from ``ctx.noise`` (a ``SampleNoise``), drawn for all B
samples at once, so with per-sample seeds a sample's codes depend on its seed alone.

Plugins: ``@register_sampler`` a ``Sampler`` subclass under its ``name``; a method runs under the
samplers whose ``supports(method)`` holds, by default those named in ``Method.samplers``.

Parameters: a sampler's options are keyword-only constructor arguments with defaults (e.g.
``dopri5``'s ``rtol`` and ``atol``). A sampler is named by a spec ``name`` or
``name:key=value,key=value`` (``build_sampler``), and ``Sampler.label`` is its canonical spec with
every parameter spelt out (``"maskgit:choice_temperature=4.5"``), so results made with different
parameters never share a name.

Adaptive samplers (``adaptive = True``) choose their own evaluation times: they override ``solve``
(the grid loop), count their evaluations as they make them and report that count.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from methods.registry import Registry

if TYPE_CHECKING:
    from methods.base import Denoiser, Method


@dataclass
class SampleOutput:
    """What a sampler returns.

    codes: (B, h, w) int64 code indices in [0, K).
    nfe: network passes per sample (the sampler's evaluations x passes_per_step(w): CFG with w != 1
        costs two passes per evaluation).
    trace: per-step scalars averaged over the batch, e.g. ``{"entropy": [H_0, ..., H_{N-1}]}``,
        with ``trace["t"]`` the time at which each entry was measured (an adaptive sampler: one
        entry per network evaluation, so its length varies from batch to batch).
    sampler: the sampler's ``label`` (its name and every parameter), e.g. ``"dopri5:rtol=0.001,atol=0.001"``.
    """

    codes: Tensor
    nfe: int
    trace: dict[str, list[float]] = field(default_factory=dict)
    sampler: str = ""


class SampleNoise:
    """A sampler's source of randomness for a batch of B samples.

    ``randn(*shape)``, ``rand(*shape)`` and ``randint(high, *shape)`` return (B, *shape) tensors.
    Built with ``per_sample(seeds, device)``, row i comes from sample i's own generator (seeded
    with ``seeds[i]``), so a sample's noise is a function of its seed alone: the same whichever
    batch, batch size or rank draws it. Built with ``shared(generator, B, device)``, all rows
    come from one generator in one call (cheaper; what a plain ``torch.Generator`` means).
    """

    def __init__(
        self,
        batch: int,
        device,
        *,
        shared: torch.Generator | None = None,
        per_sample: Sequence[torch.Generator] | None = None,
    ):
        self.batch, self.device = batch, torch.device(device)
        self.shared_generator, self.generators = shared, None if per_sample is None else list(per_sample)

    @classmethod
    def shared(cls, generator: torch.Generator | None, batch: int, device) -> SampleNoise:
        return cls(batch, device, shared=generator)

    @classmethod
    def per_sample(cls, seeds: Sequence[int], device) -> SampleNoise:
        return cls(len(seeds), device, per_sample=[torch.Generator(device=device).manual_seed(int(s)) for s in seeds])

    def _draw(self, fn: Callable[..., Tensor], shape: tuple[int, ...]) -> Tensor:
        if self.generators is None or self.batch == 0:
            return fn((self.batch, *shape), generator=self.shared_generator, device=self.device)
        return torch.cat([fn((1, *shape), generator=g, device=self.device) for g in self.generators])

    def randn(self, *shape: int) -> Tensor:
        return self._draw(torch.randn, shape)

    def rand(self, *shape: int) -> Tensor:
        return self._draw(torch.rand, shape)

    def randint(self, high: int, *shape: int) -> Tensor:
        return self._draw(partial(torch.randint, high), shape)


def sample_noise(generator: torch.Generator | SampleNoise | None, batch: int, device) -> SampleNoise:
    """The ``SampleNoise`` of a sampler call: ``generator`` itself if it is one (its batch must be
    ``batch``), else one shared stream from the ``torch.Generator`` (or the global RNG for None)."""
    if isinstance(generator, SampleNoise):
        if generator.batch != batch:
            raise ValueError(f"SampleNoise holds {generator.batch} streams for a batch of {batch} samples")
        return generator
    return SampleNoise.shared(generator, batch, device)


def time_grid(steps: int, device) -> Tensor:
    """The uniform grid t_i = i / N: 0 = t_0 < t_1 < ... < t_N = 1, shape (steps + 1,)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


def passes_per_step(cfg_scale: float) -> int:
    """Network passes of one guided evaluation: 1 without guidance (w = 1), else 2 (conditional and null)."""
    return 1 if cfg_scale == 1.0 else 2


@dataclass(frozen=True)
class SampleContext:
    """What one sampler call holds fixed: the model, labels y (B,) int64, the latent grid (h, w),
    the temperature tau, the CFG scale w and the noise (B streams)."""

    model: Denoiser
    labels: Tensor
    grid: tuple[int, int]
    temperature: float
    cfg_scale: float
    noise: SampleNoise

    @property
    def batch(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def time(self, t: float) -> Tensor:
        """The time t for every sample, (B,)."""
        return torch.full((self.batch,), t, device=self.device)


class Solution(NamedTuple):
    """What ``Sampler.solve`` returns: the state at t = 1, the guided network evaluations per sample
    it made, and its trace (``"t"`` and the per-entry values, as lists of floats)."""

    state: Any
    evaluations: int
    trace: dict[str, list[float]]


class Sampler(ABC):
    """Base class of the sampler plugins.

    A subclass sets ``name`` and a docstring stating what one step computes and its network
    evaluations (NFE) per step, and implements ``step``. It may override ``times`` (default: the
    uniform grid), ``evaluations`` (default: one guided evaluation per step) and ``supports``
    (default: the method lists ``name`` in ``samplers``). ``run`` is the loop; methods call it
    through ``Method.sample(..., sampler=name)``. Parameters are keyword-only ``__init__``
    arguments with defaults, stored as attributes of the same names (module docstring).
    """

    name: ClassVar[str]
    """Registry name, e.g. ``"euler"``."""

    batch_independent: ClassVar[bool] = True
    """With per-sample noise, a sample's codes depend on its seed alone, not on the batch it is drawn
    in. False for a solver whose step sizes are chosen for the whole batch at once (``dopri5``)."""

    adaptive: ClassVar[bool] = False
    """The sampler chooses its evaluation times as it goes: ``evaluations`` is None, ``solve`` counts
    the evaluations it makes, ``steps`` does not set the grid and the trace has one entry per evaluation."""

    @classmethod
    def supports(cls, method: type[Method]) -> bool:
        """Whether this sampler runs ``method`` (a class): it lists the sampler's name in ``samplers``."""
        return cls.name in method.samplers

    @classmethod
    def parameter_defaults(cls) -> dict[str, Any]:
        """The sampler's parameters (keyword-only ``__init__`` arguments) and their defaults, in order."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @property
    def parameters(self) -> dict[str, Any]:
        """This instance's parameter values, in declaration order."""
        return {key: getattr(self, key) for key in self.parameter_defaults()}

    @property
    def label(self) -> str:
        """The canonical spec: ``name``, or ``name:key=value,...`` with every parameter (defaults
        included) in declaration order; ``build_sampler(label)`` rebuilds the same sampler."""
        params = self.parameters
        if not params:
            return self.name
        return f"{self.name}:" + ",".join(f"{key}={format_parameter(value)}" for key, value in params.items())

    def times(self, steps: int, device) -> Tensor:
        """The grid 0 = t_0 < ... < t_N = 1 for N = ``steps``, shape (steps + 1,)."""
        return time_grid(steps, device)

    def evaluations(self, steps: int) -> int | None:
        """Guided network evaluations per sample in ``steps`` steps (each ``passes_per_step(w)`` passes);
        None for an adaptive sampler, whose count is known only after the run."""
        return steps

    @abstractmethod
    def step(
        self, method: Method, ctx: SampleContext, state: Any, t: float, t_next: float
    ) -> tuple[Any, dict[str, Tensor]]:
        """One step of ``method`` from t to t_next: the new state and per-step trace values (0-dim tensors)."""

    def solve(self, method: Method, ctx: SampleContext, state: Any, steps: int) -> Solution:
        """The state at t = 1 from ``state`` at t = 0: the grid loop ``step`` over ``times(steps)``
        (an adaptive sampler overrides this)."""
        ts = self.times(steps, ctx.device).tolist()
        if len(ts) != steps + 1 or ts[0] != 0.0 or ts[-1] != 1.0 or any(a >= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"sampler {self.name!r}: times({steps}) must be 0 = t_0 < ... < t_{steps} = 1, got {ts}")
        values: dict[str, list[Tensor]] = {}  # kept on the device until the end (no per-step sync)
        for t, t_next in zip(ts[:-1], ts[1:]):
            state, step_values = self.step(method, ctx, state, t, t_next)
            for key, value in step_values.items():
                values.setdefault(key, []).append(value)
        trace = {"t": ts[:-1], **{key: torch.stack(v).tolist() for key, v in values.items()}}
        return Solution(state, self.evaluations(steps), trace)

    def run(
        self,
        method: Method,
        model: Denoiser,
        labels: Tensor,
        grid: tuple[int, int],
        *,
        steps: int,
        temperature: float,
        cfg_scale: float,
        noise: SampleNoise,
    ) -> SampleOutput:
        """Sample B = ``len(labels)`` code grids of size ``grid`` in ``steps`` steps (module docstring)."""
        ctx = SampleContext(model, labels, grid, temperature, cfg_scale, noise)
        state = method.initial_state(ctx)
        solution = self.solve(method, ctx, state, steps)
        return SampleOutput(
            codes=method.final_codes(ctx, solution.state),
            nfe=solution.evaluations * passes_per_step(cfg_scale),
            trace=solution.trace,
            sampler=self.label,
        )


def format_parameter(value: Any) -> str:
    """A parameter value as spec text that parses back to the same value (floats by ``repr``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_parameter(text: str, default: Any, sampler: str, key: str) -> Any:
    """Spec text -> a value of the type of the parameter's default."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(default, (int, float)):
            return type(default)(text)
        return text
    except ValueError:
        raise ValueError(
            f"sampler {sampler!r}: parameter {key!r} takes a {type(default).__name__}, got {text!r}"
        ) from None


def parse_sampler_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (name, {key: value text})."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"sampler spec {spec!r}: expected key=value, got {item!r}")
        if key in params:
            raise ValueError(f"sampler spec {spec!r}: parameter {key!r} given twice")
        params[key] = value.strip()
    return name.strip(), params


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")
register_sampler = SAMPLERS.register
get_sampler = SAMPLERS.get
sampler_names = SAMPLERS.names


def build_sampler(spec: str | Sampler, **params: Any) -> Sampler:
    """A sampler instance from a spec (``"dopri5"``, ``"dopri5:rtol=1e-4,atol=1e-4"``, or a
    ``Sampler`` returned as is) and keyword parameters (which override the spec's). Unknown names
    raise the registry's ``KeyError``; unknown parameters and bad values a ``ValueError``."""
    if isinstance(spec, Sampler):
        if params:
            raise ValueError(f"sampler {spec.label!r} is already built; give parameters in a spec instead")
        return spec
    name, texts = parse_sampler_spec(spec)
    cls = get_sampler(name)
    defaults = cls.parameter_defaults()
    unknown = sorted(set(texts) - set(defaults)) + sorted(set(params) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise ValueError(f"sampler {name!r} has no parameter {unknown[0]!r}; its parameters: {known}")
    values = {key: parse_parameter(text, defaults[key], name, key) for key, text in texts.items()}
    return cls(**{**values, **params})


@register_sampler
class Euler(Sampler):
    """Euler on the uniform grid t_i = i / N; one guided network evaluation per step, so
    NFE = N x passes_per_step(w). Step i is the method's ``euler_step`` from t = t_i to t' = t_{i+1}
    (h = t' - t), with the network evaluated at the left end t:

    * Gaussian path z_t = t z1 + (1 - t) z0 (``purr``, ``cfm``, ``cfm-endpoint``): z <- z + h v
      with the predicted velocity v, or, from a predicted endpoint x1 (v = (x1 - z) / (1 - t)),
      z <- z + (h / (1 - t)) (x1 - z), which lands on x1 at t' = 1;
    * mixture path with kappa(t) = t (``dfm``, ``dfm-uniform``): each position that may move
      jumps with probability min(1, h / (1 - t)) (1 at t' = 1) to a draw from softmax(l[:K] / tau).
    """

    name = "euler"

    def step(
        self, method: Method, ctx: SampleContext, state: Any, t: float, t_next: float
    ) -> tuple[Any, dict[str, Tensor]]:
        return method.euler_step(ctx, state, t, t_next)
