"""The Gaussian-path family (``purr``, ``cfm``, ``cfm-endpoint``): z_t = t z1 + (1 - t) z0 with
z1 = C[c] and z0 ~ N(0, I), t ~ U[T_EPS, 1) in training.

Sampling state: the point z (B, d, h, w), from z_0 ~ N(0, s(tau)^2 I) (``source_std``). One guided
network evaluation at (z, t) (``predict``) gives ``out`` (B, d, h, w), which per ``prediction`` is

* ``"velocity"``: v = E[z1 - z0 | z_t = z]; Euler from t to t' = t + h: z <- z + h v;
* ``"endpoint"``: x1 = E[z1 | z_t = z], so v = (x1 - z) / (1 - t); Euler in closed form
  z <- z + (h / (1 - t)) (x1 - z) (``torch.lerp``), which lands exactly on x1 at t' = 1.

``predict`` (one evaluation), ``velocity`` (its velocity v, either way) and ``advance`` (the Euler
move along it) are the hooks the higher-order solvers of the same ODE (``heun``, ``midpoint``,
``dopri5``: ``methods.ode_samplers``) build on. The codes are the nearest codebook entry to the
final z per position (L2; cosine for a normalised codebook), unless the final prediction read
them out itself (``Prediction.codes``: purr's ``argmax`` and ``sample`` rules).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from backbones.tokenizers.base import nearest_codes
from methods.base import Method, SampleContext, gaussian_path_draws


@dataclass
class Prediction:
    """One guided evaluation at (z, t): ``out`` (B, d, h, w) (velocity or endpoint, per the method's
    ``prediction``), per-step trace values (0-dim tensors) and, from a final prediction that reads
    them out directly, ``codes`` (B, h, w)."""

    out: Tensor
    trace: dict[str, Tensor] = field(default_factory=dict)
    codes: Tensor | None = None


@dataclass
class PathState:
    """z (B, d, h, w) at the current time; ``codes`` (B, h, w) once a final prediction read them out."""

    z: Tensor
    codes: Tensor | None = None


class GaussianPathMethod(Method):
    """A method on the Gaussian path; subclasses set ``prediction`` and implement ``predict``."""

    prediction: ClassVar[Literal["velocity", "endpoint"]]
    """What the guided network output ``out`` estimates at (z_t, t): the velocity or the endpoint z1."""

    samplers = ("euler", "heun", "midpoint", "dopri5")

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return gaussian_path_draws(codes, self.code_dim, generator)

    def source_std(self, temperature: float) -> float:
        """s(tau), the sampler's source z_0 ~ N(0, s^2 I): the temperature itself by default."""
        return temperature

    @abstractmethod
    def predict(self, ctx: SampleContext, z: Tensor, t: float, *, final: bool = False) -> Prediction:
        """One guided network evaluation at (z, t), z (B, d, h, w). ``final``: the step it drives
        ends at t = 1 (a method may then read codes out of it)."""

    def velocity(self, z: Tensor, out: Tensor, t: float) -> Tensor:
        """dz/dt at (z, t) from the prediction ``out`` made there: ``out`` itself, or
        (out - z) / (1 - t) from an endpoint (singular at t = 1: never called there)."""
        if self.prediction == "velocity":
            return out
        return (out - z) / (1.0 - t)

    def advance(self, z: Tensor, out: Tensor, t: float, t_next: float) -> Tensor:
        """The Euler move of z from t to t_next along the prediction ``out`` made at (z, t)."""
        if self.prediction == "velocity":
            return z + (t_next - t) * out
        return torch.lerp(z, out, (t_next - t) / (1.0 - t))  # weight 1 at t_next = 1: exactly out

    def initial_state(self, ctx: SampleContext) -> PathState:
        return PathState(self.source_std(ctx.temperature) * ctx.noise.randn(self.code_dim, *ctx.grid))

    def euler_step(
        self, ctx: SampleContext, state: PathState, t: float, t_next: float
    ) -> tuple[PathState, dict[str, Tensor]]:
        pred = self.predict(ctx, state.z, t, final=t_next == 1.0)
        return PathState(self.advance(state.z, pred.out, t, t_next), pred.codes), pred.trace

    def final_codes(self, ctx: SampleContext, state: PathState) -> Tensor:
        return nearest_codes(state.z, self.codebook, self.normalized) if state.codes is None else state.codes
