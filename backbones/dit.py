"""The shared backbone: a DiT with adaLN-Zero conditioning (Peebles & Xie, 2023).

One network serves every method; only its input and output layers change with the method's
``BackboneIO``:

* input ``"embedding"``: a (B, d, h, w) grid, patchified by a p x p stride-p convolution;
* input ``"tokens"``: a (B, h, w) id grid, looked up in an (V, width) embedding table and then
  patchified by the same kind of convolution (width -> width);
* output: C values per latent position; the final layer emits p*p*C' numbers per token, which
  are unpatchified back to (B, C, h, w). C' = C, except for wide heads (p*p*C >= HEAD_PAD_MIN):
  there C' >= C makes p*p*C' a multiple of HEAD_ALIGN, so the head's bf16 matrix products stay
  aligned on GPUs (dfm at K = 16384: 4 x 16385 = 65540 outputs -> 65600); the padding channels
  are dropped by ``unpatchify`` and masked out of the fused loss.

Conditioning c = MLP(sinusoid(1000 t)) + E[y], where E has num_classes + 1 rows (the last is
the null label used by classifier-free guidance; label dropout is done by the trainer).
Positions use fixed 2-D sin-cos embeddings. Every block's adaLN modulation and the final layer
start at zero, so the untrained network outputs zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

HEAD_ALIGN = 64
"""The output projection's width is padded to a multiple of this (tensor-core tile alignment)."""
HEAD_PAD_MIN = 1024
"""Heads narrower than this are not padded (their matmuls are small; padding would only add work)."""


def padded_channels(channels: int, patch: int, align: int = HEAD_ALIGN) -> int:
    """C' >= C with p*p*C' a multiple of ``align``, for heads of at least HEAD_PAD_MIN outputs."""
    per_token = patch * patch
    if align <= 1 or per_token * channels < HEAD_PAD_MIN:
        return channels
    step = align // math.gcd(align, per_token)
    return -(-channels // step) * step


@dataclass(frozen=True)
class BackboneIO:
    """What a method needs from the backbone.

    input: ``"embedding"`` (a (B, in_channels, h, w) float grid) or ``"tokens"`` (a (B, h, w)
        int64 grid of ids in [0, in_channels)).
    in_channels: d for embeddings, the vocabulary size V for tokens.
    out_channels: values the backbone emits per latent position (d, K or V).
    """

    input: Literal["embedding", "tokens"]
    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class Preset:
    depth: int
    width: int
    heads: int


PRESETS: dict[str, Preset] = {
    # CPU sizes; measured fp32 training on 2 cores at batch 32: tiny about 20 steps/s, mini about 4.3
    "tiny": Preset(depth=2, width=64, heads=2),
    "mini": Preset(depth=4, width=128, heads=4),
    "small-cpu": Preset(depth=6, width=256, heads=4),
    # the DiT paper's sizes
    "S": Preset(depth=12, width=384, heads=6),
    "B": Preset(depth=12, width=768, heads=12),
    "L": Preset(depth=24, width=1024, heads=16),
    "XL": Preset(depth=28, width=1152, heads=16),
}


def parse_backbone_name(name: str) -> tuple[str, int]:
    """``"DiT-XL/2"`` or ``"XL/2"`` or ``"mini/1"`` -> (preset, patch)."""
    body = name.removeprefix("DiT-")
    preset, _, patch = body.partition("/")
    if preset not in PRESETS or not patch.isdigit():
        raise ValueError(
            f"unknown backbone {name!r}: expected PRESET/PATCH with PRESET in "
            f"{', '.join(PRESETS)} and PATCH in 1, 2, 4 (e.g. DiT-XL/2, mini/1)"
        )
    return preset, int(patch)


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """Sin-cos embedding of positions (n,) -> (n, dim) with frequencies 1/10000^(2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D positions (h*w, dim): half the channels encode the row, half the column."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], dim=1)


def timestep_sinusoid(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of 1000 t (t in [0, 1]), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D/H)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block; adaLN-Zero gives shift, scale and gate for both branches."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """DiT over a latent grid of (h, w) positions with patch size p.

    forward(x, t, y): x (B, d, h, w) float or (B, h, w) int64; t (B,); y (B,) int64 in
    [0, num_classes] -> (B, C, h, w).
    ``features(x, t, y)`` returns the modulated final hidden states (B, T, width) before the
    output projection ``head`` (T = hw / p^2), for losses that fuse the projection themselves.
    ``forward(x, t, y, return_features=True)`` returns the same features through ``forward``, so
    such losses still call the model through its wrappers (DistributedDataParallel's forward sets
    up the gradient all-reduce; calling ``.module.features`` directly would skip it).
    """

    def __init__(
        self,
        io: BackboneIO,
        grid: tuple[int, int],
        num_classes: int,
        *,
        depth: int,
        width: int,
        heads: int,
        patch: int = 1,
        mlp_ratio: float = 4.0,
        head_align: int = HEAD_ALIGN,
    ):
        super().__init__()
        h, w = grid
        if h % patch or w % patch:
            raise ValueError(f"latent grid {grid} is not divisible by patch size {patch}")
        if width % heads or width % 4:
            raise ValueError(f"width {width} must be divisible by heads {heads} and by 4")
        self.io, self.grid, self.patch, self.num_classes = io, (h, w), patch, num_classes
        if io.input == "tokens":
            self.token_embed = nn.Embedding(io.in_channels, width)
            patch_in = width
        else:
            self.token_embed = None
            patch_in = io.in_channels
        self.patch_embed = nn.Conv2d(patch_in, width, kernel_size=patch, stride=patch)
        self.register_buffer("pos", sincos_2d(width, h // patch, w // patch)[None], persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.y_embed = nn.Embedding(num_classes + 1, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out_channels = io.out_channels
        self.head_channels = padded_channels(io.out_channels, patch, head_align)  # C' (see the module docstring)
        self.head = nn.Linear(width, patch * patch * self.head_channels)
        self.initialize()

    def initialize(self) -> None:
        """DiT's init: Xavier linears, normal(0.02) embeddings, zero adaLN and output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        if self.token_embed is not None:
            nn.init.normal_(self.token_embed.weight, std=0.02)
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for lin in (self.final_ada[-1], self.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def features(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.token_embed is not None:
            x = self.token_embed(x).permute(0, 3, 1, 2)  # (B, width, h, w)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, T, width)
        c = self.t_embed(timestep_sinusoid(t)) + self.y_embed(y)  # (B, width)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        return modulate(self.final_norm(x), shift, scale)

    def unpatchify(self, out: Tensor) -> Tensor:
        """(B, T, p*p*C') -> (B, C, h, w), without the padding channels."""
        b, p, (h, w) = out.shape[0], self.patch, self.grid
        out = out.view(b, h // p, w // p, p, p, self.head_channels)[..., : self.out_channels]
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h, w)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, *, return_features: bool = False) -> Tensor:
        features = self.features(x, t, y)  # (B, T, width)
        return features if return_features else self.unpatchify(self.head(features))


def build_dit(name: str, io: BackboneIO, grid: tuple[int, int], num_classes: int, **overrides) -> DiT:
    """A DiT from a preset name such as ``"DiT-XL/2"`` or ``"mini/1"``."""
    preset, patch = parse_backbone_name(name)
    p = PRESETS[preset]
    kwargs = dict(depth=p.depth, width=p.width, heads=p.heads, patch=patch) | overrides
    return DiT(io, grid, num_classes, **kwargs)
