"""The convolutional VQ encoder/decoder shared by taming-transformers (VQGAN), LDM (``vq-f8``)
and LlamaGen, written so that their published weights load by name.

Architecture, with ``L = len(ch_mult)`` resolution levels and base width ``ch``::

    Encoder  x (B, 3, H, W)
      conv_in 3x3: 3 -> ch
      level i = 0..L-1 (width ch*ch_mult[i], spatial H / 2^i):
        num_res_blocks x ResnetBlock  (+ an AttnBlock after each block if i in attn_levels)
        downsample (i < L-1): pad (left 0, right 1, top 0, bottom 1), 3x3 conv stride 2
      mid: ResnetBlock, AttnBlock, ResnetBlock
      norm_out (GroupNorm) -> SiLU -> conv_out 3x3: -> z_channels
    -> z (B, z_channels, H / 2^(L-1), W / 2^(L-1))

    Decoder  z (B, z_channels, h, w)
      conv_in 3x3: z_channels -> ch*ch_mult[L-1]
      mid: ResnetBlock, AttnBlock, ResnetBlock
      level j = L-1..0 (width ch*ch_mult[j]):
        (num_res_blocks + 1) x ResnetBlock (+ AttnBlock if j in attn_levels)
        upsample (j > 0): nearest x2, 3x3 conv
      norm_out -> SiLU -> conv_out 3x3: -> 3
    -> x (B, 3, h * 2^(L-1), w * 2^(L-1))

ResnetBlock(c_in -> c_out): ``h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))``, output
``nin_shortcut(x) + h`` (``nin_shortcut`` a 1x1 conv, present only when c_in != c_out).
AttnBlock(c): single-head self-attention over the h*w positions,
``x + proj_out(softmax(q^T k / sqrt(c)) v)`` with q, k, v, proj_out 1x1 convs of
``GroupNorm(x)``. Every GroupNorm has 32 groups and eps 1e-6.

Module names follow taming/LDM (``down.{i}.block.{j}``, ``up.{j}.attn.{k}``,
``mid.block_1``, ...); ``up`` is indexed by resolution level (``up[L-1]`` is the
lowest resolution, run first).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    if channels % 32:
        raise ValueError(f"GroupNorm(32) needs a channel count divisible by 32, got {channels}")
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block (c_in -> c_out) at constant resolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:  # (B, c_in, h, w) -> (B, c_out, h, w)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, c, h, w) -> (B, c, h, w)
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (conv(n).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, h*w, c), scale 1/sqrt(c)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the resolution: zero-pad right and bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution."""

    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: residual blocks (each optionally followed by attention) and an
    optional resampling step (``downsample`` in the encoder, ``upsample`` in the decoder)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attention: bool, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(n_blocks if attention else 0))
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """Images (B, in_channels, H, W) -> latents (B, z_channels, H/f, W/f), f = 2^(L-1)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_levels: tuple[int, ...],
        z_channels: int,
        in_channels: int = 3,
    ):
        super().__init__()
        levels = len(ch_mult)
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(
                ch if i == 0 else widths[i - 1],
                widths[i],
                num_res_blocks,
                i in attn_levels,
                "down" if i < levels - 1 else None,
            )
            for i in range(levels)
        )
        self.mid = Mid(widths[-1])
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, out_channels, h*f, w*f), f = 2^(L-1)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_levels: tuple[int, ...],
        z_channels: int,
        out_channels: int = 3,
    ):
        super().__init__()
        levels = len(ch_mult)
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1])
        # up[j] runs at level j; it receives the width of level j+1 (or the mid width for j = L-1)
        self.up = nn.ModuleList(
            Level(
                widths[min(j + 1, levels - 1)], widths[j], num_res_blocks + 1, j in attn_levels, "up" if j > 0 else None
            )
            for j in range(levels)
        )
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
