"""An example sampler plugin: Euler on a cosine-spaced time grid (``euler-cosine``).

The grid t_i = (1 - cos(pi i / N)) / 2, i = 0 .. N, takes short steps near t = 0 and t = 1 and
long ones in the middle. Each step is the method's own Euler step from t_i to t_{i+1}, so, as for
``euler``, one guided network evaluation per step: NFE = N x passes_per_step(w). The sampler
calls no hook but ``euler_step``, so it runs every method that supports ``euler``. Use it with

    import examples.cosine_grid_euler  # registers the sampler
    out = method.sample(model, labels, grid, steps=16, sampler="euler-cosine")
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from methods.base import Method
from methods.sampling import Euler, register_sampler, time_grid


@register_sampler
class CosineGridEuler(Euler):
    """Euler on t_i = (1 - cos(pi i / N)) / 2; one guided network evaluation per step
    (NFE = N x passes_per_step(w)); the step is the method's ``euler_step``."""

    name = "euler-cosine"

    @classmethod
    def supports(cls, method: type[Method]) -> bool:
        """The methods that support ``euler``: this sampler needs their Euler step only."""
        return Euler.supports(method)

    def times(self, steps: int, device) -> Tensor:
        return (1.0 - torch.cos(math.pi * time_grid(steps, device))) / 2.0
