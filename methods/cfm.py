"""Continuous flow matching (``cfm``): velocity regression on code embeddings.

Training: ``z_t = t z1 + (1 - t) z0`` with ``z1 = C[c]``, ``z0 ~ N(0, I)``, ``t ~ U[T_EPS, 1)``;
the backbone maps ``(z_t, t, y)`` to d channels per position and the loss is
``MSE(out, target)`` with ``target = z1 - z0``.

Sampling (``methods.gaussian_path``): ``z ~ N(0, tau^2 I)`` (the temperature is the source-noise
scale; it has no categorical meaning here), Euler steps ``z <- z + (t' - t) out`` with CFG on the
network output (the velocity), then the nearest codebook entry per position (L2; cosine for a
normalised codebook).
"""

from __future__ import annotations

from torch import Tensor

from methods.base import BackboneIO, Denoiser, SampleContext, guided, interpolate
from methods.gaussian_path import GaussianPathMethod, Prediction
from methods.registry import register


@register
class ContinuousFlow(GaussianPathMethod):
    name = "cfm"
    temperature_meaning = "source-noise scale: z0 ~ N(0, tau^2 I)"
    prediction = "velocity"

    def backbone_io(self) -> BackboneIO:
        return BackboneIO("embedding", self.code_dim, self.code_dim)

    def target(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Regression target: the conditional velocity z1 - z0."""
        return z1 - z0

    def loss(self, model: Denoiser, codes: Tensor, labels: Tensor, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        t, z0, z1 = draws["t"], draws["z0"], self.embed(codes)
        out = model(interpolate(z0, z1, t), t, labels).float()  # (B, d, h, w)
        mse = (out - self.target(z0, z1)).square().mean()
        return {"loss": mse, "mse": mse.detach()}

    def predict(self, ctx: SampleContext, z: Tensor, t: float, *, final: bool = False) -> Prediction:
        """The guided network output at (z, t): ``out_null + w (out_y - out_null)``, (B, d, h, w)."""
        return Prediction(guided(ctx.model, z, ctx.time(t), ctx.labels, ctx.cfg_scale).float())
