"""An example method plugin: continuous flow matching with logit-normal training times.

Stable Diffusion 3 samples training times as t = sigmoid(n), n ~ N(mean, std^2), which puts more
training signal at intermediate t than U[0, 1). Everything else (velocity target, Euler sampler,
nearest-code quantization) is inherited from ``cfm``. Use it with

    python -m benchmarks.run --plugins examples.lognormal_cfm --methods cfm,cfm-lognormal
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.cfm import ContinuousFlow
from methods.registry import register


@register
class LogitNormalFlow(ContinuousFlow):
    name = "cfm-lognormal"

    def __init__(self, codebook: Tensor, normalized: bool = False, *, mean: float = 0.0, std: float = 1.0):
        super().__init__(codebook, normalized)
        if std <= 0:
            raise ValueError(f"method {self.name!r}: std must be > 0, got {std}")
        self.mean, self.std = mean, std

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        draws = super().draw(codes, generator)
        n = torch.randn(codes.shape[0], generator=generator, device=generator.device)
        draws["t"] = torch.sigmoid(self.mean + self.std * n).clamp(1e-3, 1 - 1e-3)
        return draws
