"""A test plugin: Purrception whose loss becomes infinite from a given training step on (as a far
too large learning rate makes it, but at a known step), to test that divergence is detected."""

from __future__ import annotations

from torch import Tensor

from methods.purr import Purrception
from methods.registry import register


@register
class DivergingPurrception(Purrception):
    name = "purr-diverging"

    def __init__(self, codebook: Tensor, normalized: bool = False, *, diverge_at: int = 25):
        super().__init__(codebook, normalized)
        self.diverge_at, self.calls = diverge_at, 0

    def loss(self, model, codes, labels, draws):
        self.calls += 1
        out = super().loss(model, codes, labels, draws)
        if self.calls >= self.diverge_at:
            out["loss"] = out["loss"] * float("inf")
        return out
