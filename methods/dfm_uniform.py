"""Discrete flow matching with a uniform source (``dfm-uniform``; Gat et al. 2024, Campbell et al. 2024).

Vocabulary V = K (no mask). On the path a dropped position shows a uniformly random code
(``draw`` adds ``"source": (B, h, w)`` uniform in [0, K)). The sampler starts from uniform random
codes and every position may jump at every step (and again later) to a draw from
``softmax(l / tau)``; on the last step every position jumps. See ``methods.dfm`` for the path,
loss and Euler step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import SampleContext
from methods.dfm import DiscreteFlow
from methods.registry import register


@register
class UniformDiscreteFlow(DiscreteFlow):
    name = "dfm-uniform"

    @property
    def vocab_size(self) -> int:
        return self.num_codes

    def draw(self, codes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        draws = super().draw(codes, generator)
        draws["source"] = torch.randint(self.num_codes, codes.shape, generator=generator, device=generator.device)
        return draws

    def source_tokens(self, codes: Tensor, draws: dict[str, Tensor]) -> Tensor:
        return draws["source"]

    def initial_state(self, ctx: SampleContext) -> Tensor:
        """Uniform random codes x_0, (B, h, w)."""
        return ctx.noise.randint(self.num_codes, *ctx.grid)

    def movable(self, x: Tensor) -> Tensor:
        return torch.ones_like(x, dtype=torch.bool)
