"""An example tokenizer plugin: ``patch-levels``, a fixed grey-level quantiser with no training and
no checkpoint. Its codes keep only each patch's mean brightness, so it is a quick, training-free
latent space for trying a method or a pipeline change in seconds, and a floor for real tokenizers.

With K = 16 levels l_k = -1 + 2k / (K - 1) (the codebook, K x d = 16 x 1) and patches of f = 4 pixels:

    encode: x (B, C, H, W) in [-1, 1] -> m = mean of x over the channels and each f x f patch (B, H/f, W/f)
            -> c = argmin_k |m - l_k|
    decode: c (B, h, w) -> l_c painted over its f x f patch (B, 1, h f, w f)

Images are read grey (one channel). Use it with

    python -m benchmarks.run --plugins examples.patch_levels_tokenizer --set tokenizer.kind=patch-levels
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from backbones.tokenizers.base import Tokenizer
from benchmarks.core.config import ConfigError, TokenizerConfig
from benchmarks.data.tokenizers import BuiltTokenizer, TokenizerKind, register
from benchmarks.storage.cache import content_hash

LEVELS, PATCH = 16, 4


class PatchLevels(Tokenizer):
    downsample, in_channels, normalized = PATCH, 1, False

    def __init__(self):
        super().__init__()
        self.register_buffer("levels", torch.linspace(-1, 1, LEVELS)[:, None])  # (K, 1)

    @property
    def codebook(self) -> Tensor:
        return self.levels

    def encode(self, images: Tensor) -> Tensor:
        means = F.avg_pool2d(images.mean(1, keepdim=True), PATCH)[:, 0]  # (B, h, w)
        return (means[..., None] - self.levels[:, 0]).abs().argmin(-1)

    def decode(self, codes: Tensor) -> Tensor:
        return self.levels[codes, 0][:, None].repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3)


@register
class PatchLevelsKind(TokenizerKind):
    name = "patch-levels"
    needs_ckpt = False

    def check(self, tok: TokenizerConfig) -> None:
        if tok.ckpt:
            raise ConfigError(f"tokenizer.ckpt: {self.name!r} has no checkpoint, got {tok.ckpt}; remove tokenizer.ckpt")

    def geometry(self, tok: TokenizerConfig) -> tuple[int, int, int]:
        return LEVELS, 1, PATCH

    def build(self, tok: TokenizerConfig, load, *, progress: bool = True) -> BuiltTokenizer:
        tokenizer = PatchLevels()
        return BuiltTokenizer(tokenizer, content_hash(self.name, LEVELS, PATCH), load(tokenizer.in_channels))

    def open(self, tok: TokenizerConfig, recorded: dict, where: str) -> Tokenizer:
        return PatchLevels()
