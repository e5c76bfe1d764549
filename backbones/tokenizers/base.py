"""The tokenizer interface every VQ latent space implements.

A tokenizer maps images ``x`` in [-1, 1] of shape (B, C, H, W) to a grid of code indices
``c`` in [K]^{h x w} of shape (B, h, w) and back. Its codebook ``C`` (K, d) is the table the
methods embed codes with (``z1 = C[c]``, channel-first (B, d, h, w)). If ``normalized`` is
true the codebook is the *L2-normalised* table, and nearest-code search is by cosine.

Channel convention at this boundary: embedding grids are channel-first (B, d, h, w).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def nearest_codes(z: Tensor, codebook: Tensor, normalized: bool, chunk: int = 8192) -> Tensor:
    """Index of the nearest codebook row for every position of an embedding grid.

    z: (B, d, h, w) float; codebook: (K, d). Returns (B, h, w) int64.
    L2 distance ``||z - e_k||^2 = ||z||^2 - 2 z.e_k + ||e_k||^2``; for a normalised codebook
    the query is normalised too and the rule is the largest cosine similarity.
    Positions are processed in chunks so that the (positions, K) distance matrix stays small.

    Always float32, whatever autocast is active around the call: in bf16 (8 bits of mantissa)
    ``z.e_k`` cannot separate the neighbours of a K = 16384 codebook, and a query 1% away from a
    code got another code at 4.8% of positions.
    """
    b, d, h, w = z.shape
    codebook = codebook.float()
    with torch.autocast(z.device.type, enabled=False):
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        if normalized:
            flat = nn.functional.normalize(flat, dim=-1)
        sq_norms = (codebook * codebook).sum(-1)  # (K,)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        for start in range(0, flat.shape[0], chunk):
            q = flat[start : start + chunk]
            if normalized:
                score = q @ codebook.T  # cosine, larger is nearer
            else:
                score = 2 * q @ codebook.T - sq_norms  # -||q - e||^2 up to a per-row constant
            out[start : start + chunk] = score.argmax(-1)
    return out.view(b, h, w)


class Tokenizer(nn.Module, ABC):
    """A frozen VQ tokenizer: ``encode`` images to codes, ``decode`` codes to images.

    Subclasses set ``downsample`` (the spatial factor from pixels to latent positions),
    ``in_channels`` (image channels) and ``normalized`` and implement the three methods below.
    """

    downsample: int
    in_channels: int
    normalized: bool = False

    @property
    @abstractmethod
    def codebook(self) -> Tensor:
        """The (K, d) code table used for embedding and decoding (normalised if ``normalized``)."""

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> code indices (B, H/f, W/f) int64."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Code indices (B, h, w) -> images (B, C, h*f, w*f) in [-1, 1]."""

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    @property
    def code_dim(self) -> int:
        return self.codebook.shape[1]

    def latent_grid(self, image_size: int | tuple[int, int]) -> tuple[int, int]:
        """The (h, w) code grid an image of ``image_size`` pixels maps to."""
        hw = (image_size, image_size) if isinstance(image_size, int) else image_size
        return hw[0] // self.downsample, hw[1] // self.downsample

    def embed(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> embedding grid (B, d, h, w) from the codebook."""
        return self.codebook[codes].permute(0, 3, 1, 2)
