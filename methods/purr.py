"""Purrception (``purr``): variational flow matching with a categorical posterior over codes.

Training: ``z_t = t z1 + (1 - t) z0`` with ``z1 = C[c]``, ``z0 ~ N(0, I)``, ``t ~ U[T_EPS, 1)``;
the backbone maps ``(z_t, t, y)`` to K logits per latent position and the loss is
``mean_pos CE(l, c) + z_loss * mean_pos logsumexp_k(l)^2`` (no velocity regression).

Sampling (Euler on 0 = t_0 < ... < t_N = 1, starting from ``z ~ N(0, I)``): at each step
``pi = softmax(l / tau)`` per position (CFG on the logits), posterior mean ``mu = sum_k pi_k e_k``,
velocity ``v = (mu - z) / (1 - t)``, written in closed form as
``z <- z + (h / (1 - t)) (mu - z)``, so the last step (h = 1 - t) lands exactly on ``mu``.
The final codes follow ``final_rule``: ``nearest`` codebook entry to ``z`` (L2, cosine for a
normalised codebook; the paper's rule), ``argmax`` of the last logits, or a ``sample`` from the
last posterior.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from backbones.tokenizer import nearest_codes
from methods.base import (BackboneIO, Denoiser, Method, SampleOutput, categorical_draw, categorical_loss,
                          check_temperature, entropy, gaussian_path_draws, guided, interpolate, passes_per_step,
                          time_grid)
from methods.registry import register

FINAL_RULES = ("nearest", "argmax", "sample")


@register
class Purrception(Method):
    name = "purr"
    temperature_meaning = "softmax temperature tau on the code posterior"

    def __init__(self, codebook: Tensor, normalized: bool = False, *, z_loss: float = 1e-5,
                 final_rule: str = "nearest"):
        super().__init__(codebook, normalized)
        if final_rule not in FINAL_RULES:
            raise ValueError(f"method 'purr': unknown final_rule {final_rule!r}; "
                             f"expected one of {', '.join(FINAL_RULES)}")
        if not z_loss >= 0:
            raise ValueError(f"method 'purr': z_loss must be >= 0, got {z_loss}")
        self.z_loss = z_loss
        self.final_rule = final_rule

    def backbone_io(self) -> BackboneIO:
        return BackboneIO("embedding", self.code_dim, self.num_codes)

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return gaussian_path_draws(codes, self.code_dim, generator)

    def loss(self, model: Denoiser, codes: Tensor, labels: Tensor, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        t = draws["t"]
        z_t = interpolate(draws["z0"], self.embed(codes), t)  # (B, d, h, w)
        logits = model(z_t, t, labels)  # (B, K, h, w)
        return categorical_loss(logits, codes, self.z_loss)

    def posterior_mean(self, probs: Tensor) -> Tensor:
        """mu = sum_k pi_k e_k: probs (B, K, h, w) -> (B, d, h, w)."""
        return torch.einsum("bkhw,kd->bdhw", probs, self.codebook)

    @torch.no_grad()
    def sample(self, model: Denoiser, labels: Tensor, grid: tuple[int, int], *, steps: int,
               temperature: float = 1.0, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None) -> SampleOutput:
        check_temperature(temperature, self.name)
        device, b = labels.device, labels.shape[0]
        ts = time_grid(steps, device).tolist()
        z = torch.randn(b, self.code_dim, *grid, generator=generator, device=device)
        entropies = []  # mean H(pi) per step, kept on the device until the end (no per-step sync)
        for t, t_next in zip(ts[:-1], ts[1:]):
            logits = guided(model, z, torch.full((b,), t, device=device), labels, cfg_scale).float()
            probs = F.softmax(logits / temperature, dim=1)
            entropies.append(entropy(probs).mean())
            # z + (h / (1 - t)) (mu - z); lerp returns mu exactly at weight 1 (the last step)
            z = torch.lerp(z, self.posterior_mean(probs), (t_next - t) / (1.0 - t))
        if self.final_rule == "nearest":
            codes = nearest_codes(z, self.codebook, self.normalized)
        elif self.final_rule == "argmax":
            codes = logits.argmax(dim=1)
        else:
            codes = categorical_draw(probs, generator)
        trace = {"t": ts[:-1], "entropy": torch.stack(entropies).tolist()}
        return SampleOutput(codes=codes, nfe=steps * passes_per_step(cfg_scale), trace=trace)
