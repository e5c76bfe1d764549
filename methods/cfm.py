"""Continuous flow matching (``cfm``): velocity regression on code embeddings.

Training: ``z_t = t z1 + (1 - t) z0`` with ``z1 = C[c]``, ``z0 ~ N(0, I)``, ``t ~ U[T_EPS, 1)``;
the backbone maps ``(z_t, t, y)`` to d channels per position and the loss is
``MSE(out, target)`` with ``target = z1 - z0``.

Sampling: ``z ~ N(0, tau^2 I)`` (the temperature is the source-noise scale; it has no categorical
meaning here), Euler steps ``z <- step(z, out, t, t')`` with CFG on the network output, then the
nearest codebook entry per position (L2; cosine for a normalised codebook). For ``cfm`` the
output is the velocity and ``step`` is ``z + (t' - t) out``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from backbones.tokenizers.base import nearest_codes
from methods.base import (BackboneIO, Denoiser, Method, SampleNoise, SampleOutput, check_temperature,
                          gaussian_path_draws, guided, interpolate, passes_per_step, sample_noise, time_grid)
from methods.registry import register


@register
class ContinuousFlow(Method):
    name = "cfm"
    temperature_meaning = "source-noise scale: z0 ~ N(0, tau^2 I)"

    def backbone_io(self) -> BackboneIO:
        return BackboneIO("embedding", self.code_dim, self.code_dim)

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return gaussian_path_draws(codes, self.code_dim, generator)

    def target(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Regression target: the conditional velocity z1 - z0."""
        return z1 - z0

    def step(self, z: Tensor, out: Tensor, t: float, t_next: float) -> Tensor:
        """One Euler step with the network output ``out`` = velocity."""
        return z + (t_next - t) * out

    def loss(self, model: Denoiser, codes: Tensor, labels: Tensor, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        t, z0, z1 = draws["t"], draws["z0"], self.embed(codes)
        out = model(interpolate(z0, z1, t), t, labels).float()  # (B, d, h, w)
        mse = (out - self.target(z0, z1)).square().mean()
        return {"loss": mse, "mse": mse.detach()}

    @torch.no_grad()
    def sample(self, model: Denoiser, labels: Tensor, grid: tuple[int, int], *, steps: int,
               temperature: float = 1.0, cfg_scale: float = 1.0,
               generator: torch.Generator | SampleNoise | None = None) -> SampleOutput:
        check_temperature(temperature, self.name)
        device, b = labels.device, labels.shape[0]
        ts = time_grid(steps, device).tolist()
        z = temperature * sample_noise(generator, b, device).randn(self.code_dim, *grid)
        for t, t_next in zip(ts[:-1], ts[1:]):
            out = guided(model, z, torch.full((b,), t, device=device), labels, cfg_scale).float()
            z = self.step(z, out, t, t_next)
        codes = nearest_codes(z, self.codebook, self.normalized)
        return SampleOutput(codes=codes, nfe=steps * passes_per_step(cfg_scale), trace={"t": ts[:-1]})
