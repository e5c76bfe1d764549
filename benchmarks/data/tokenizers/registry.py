"""The tokenizer registry: ``@register`` a ``TokenizerKind`` under its ``name`` (the value of ``tokenizer.kind``).

A tokenizer kind says how the suite gets a frozen ``backbones.tokenizers.base.Tokenizer`` from the
config: ``build`` makes it for a data set (training it on the images, or loading a checkpoint) and
gives its cache key, ``open`` gets the one that encoded pre-encoded shards, ``geometry`` is
(K, d, f) from the config alone (``--dry-run``), ``needs_ckpt`` whether ``tokenizer.ckpt`` is
required, and ``check`` its preflight (the checkpoint file exists and is one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backbones.tokenizers.base import Tokenizer
from benchmarks.core.config import ConfigError, TokenizerConfig
from benchmarks.core.registry import Registry
from benchmarks.data.datasets.registry import ImageSource

LoadImages = Callable[[int | None], ImageSource]
"""The data set's images for a tokenizer taking this many channels (None: the data's own)."""


@dataclass
class BuiltTokenizer:
    """A tokenizer ready to encode a data set.

    key: its cache key (with the data's id it keys the code shards). source: the data set's images,
    read with the channels the tokenizer takes. quality: ``recon_mse`` and ``recon_mse_images``
    if known already (e.g. from training); None: measured on a sample when encoding.
    """

    tokenizer: Tokenizer
    key: str
    source: ImageSource
    from_cache: bool = False
    quality: dict | None = None


class TokenizerKind(ABC):
    """A registered tokenizer kind. Subclasses set ``name`` and implement the four methods."""

    name: str
    needs_ckpt: bool = True
    """``tokenizer.ckpt`` is required (a pretrained checkpoint); False: optional."""

    @abstractmethod
    def check(self, tok: TokenizerConfig) -> None:
        """Preflight: raise ConfigError naming ``tokenizer.ckpt`` and the fix if the checkpoint is
        missing or not a checkpoint. Reads file headers only."""

    @abstractmethod
    def geometry(self, tok: TokenizerConfig) -> tuple[int, int, int]:
        """(codebook size K, code dimension d, downsampling f) from the config alone."""

    @abstractmethod
    def build(self, tok: TokenizerConfig, load: LoadImages, *, progress: bool = True) -> BuiltTokenizer:
        """The tokenizer for the data set whose images ``load`` reads (called once, with the
        channels the tokenizer takes)."""

    @abstractmethod
    def open(self, tok: TokenizerConfig, recorded: dict, where: str) -> Tokenizer:
        """The tokenizer that decodes pre-encoded shards at ``where``, whose ``meta.json`` records
        ``recorded`` (its ``tokenizer`` entry: kind, key, ...)."""


def check_checkpoint_file(path: Path) -> None:
    """ConfigError naming ``tokenizer.ckpt`` if ``path`` is no checkpoint (empty, an HTML page, truncated)."""
    from backbones.tokenizers.safe_pickle import describe_non_checkpoint

    problem = describe_non_checkpoint(path)
    if problem:
        raise ConfigError(f"tokenizer.ckpt: {problem}")


REGISTRY: Registry[TokenizerKind] = Registry("tokenizer", "tokenizer.kind")
register = REGISTRY.register
"""Class decorator (or call on an instance) adding a tokenizer kind under its ``name``."""


def get_tokenizer(name: str) -> TokenizerKind:
    return REGISTRY.get(name)


def tokenizer_names() -> list[str]:
    return REGISTRY.names()
