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

With the shared DiT the K-logit head is fused (``methods.heads``): the loss and the per-step
posterior read-out (mean, entropy) are computed chunk by chunk without the full logits tensor,
and CFG mixes the features before the head (equal to mixing the logits: the head is affine).
Other models (test oracles) take the dense reference path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from backbones.tokenizers.base import nearest_codes
from methods.base import (BackboneIO, Denoiser, Method, SampleNoise, SampleOutput, check_temperature,
                          gaussian_path_draws, interpolate, passes_per_step, sample_noise, time_grid)
from methods.heads import head_loss, head_readout
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
        return head_loss(model, z_t, t, labels, codes, self.z_loss)  # K logits per position

    @torch.no_grad()
    def sample(self, model: Denoiser, labels: Tensor, grid: tuple[int, int], *, steps: int,
               temperature: float = 1.0, cfg_scale: float = 1.0,
               generator: torch.Generator | SampleNoise | None = None) -> SampleOutput:
        check_temperature(temperature, self.name)
        device, b = labels.device, labels.shape[0]
        ts = time_grid(steps, device).tolist()
        noise = sample_noise(generator, b, device)
        z = noise.randn(self.code_dim, *grid)
        entropies = []  # mean H(pi) per step, kept on the device until the end (no per-step sync)
        for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
            last = i == steps - 1
            uniforms = noise.rand(*grid) if last and self.final_rule == "sample" else None
            post = head_readout(model, z, torch.full((b,), t, device=device), labels, grid=grid, cfg_scale=cfg_scale,
                                temperature=temperature, num_codes=self.num_codes, codebook=self.codebook,
                                argmax=last and self.final_rule == "argmax", uniforms=uniforms)
            entropies.append(post.entropy.mean())
            # z + (h / (1 - t)) (mu - z); lerp returns mu exactly at weight 1 (the last step)
            z = torch.lerp(z, post.mean, (t_next - t) / (1.0 - t))
        if self.final_rule == "nearest":
            codes = nearest_codes(z, self.codebook, self.normalized)
        else:
            codes = post.argmax if self.final_rule == "argmax" else post.draw
        trace = {"t": ts[:-1], "entropy": torch.stack(entropies).tolist()}
        return SampleOutput(codes=codes, nfe=steps * passes_per_step(cfg_scale), trace=trace)
