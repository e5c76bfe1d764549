"""Training cost accounting: parameters and FLOPs per step, counted from the model itself.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
backward pass of the backbone on the meta device (nothing is allocated, so DiT-XL/2 counts in
seconds). The loss's softmax and the optimizer update are not matmuls and are left out; the
count is dominated by the backbone's and head's matrix products. 1 multiply-add = 2 FLOPs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from backbones.dit import build_dit
from methods.base import BackboneIO


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def meta_input(io: BackboneIO, grid: tuple[int, int], batch: int) -> torch.Tensor:
    if io.input == "tokens":
        return torch.zeros(batch, *grid, dtype=torch.long, device="meta")
    return torch.zeros(batch, io.in_channels, *grid, device="meta")


def model_flops(
    backbone: str, io: BackboneIO, grid: tuple[int, int], num_classes: int, batch: int = 1, backward: bool = True
) -> int:
    """FLOPs of one forward (+ backward) pass of ``batch`` samples, counted on the meta device."""
    with torch.device("meta"):
        model = build_dit(backbone, io, grid, num_classes)
    x = meta_input(io, grid, batch)
    t = torch.zeros(batch, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            model(x, t, y).float().sum().backward()
        else:
            with torch.no_grad():
                model(x, t, y)
    return int(counter.get_total_flops())


def meta_parameter_count(backbone: str, io: BackboneIO, grid: tuple[int, int], num_classes: int) -> int:
    with torch.device("meta"):
        return parameter_count(build_dit(backbone, io, grid, num_classes))
