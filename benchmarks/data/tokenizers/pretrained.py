"""Pretrained tokenizer kinds (``vq-f8``, ``llamagen-vq8``, ``llamagen-vq16``, ``taming-f16``): one
entry per ``backbones.tokenizers.pretrained.KINDS`` spec, loaded from the user's ``tokenizer.ckpt``.

Cache key: a hash of the kind and the checkpoint file's resolved path, size and modification time.
"""

from __future__ import annotations

from pathlib import Path

from backbones.tokenizers.base import Tokenizer
from backbones.tokenizers.pretrained import KINDS, get_spec
from benchmarks.core.config import ConfigError, TokenizerConfig
from benchmarks.data.tokenizers.registry import (
    BuiltTokenizer,
    LoadImages,
    TokenizerKind,
    check_checkpoint_file,
    register,
)
from benchmarks.storage.cache import content_hash


class PretrainedKind(TokenizerKind):
    """A published VQ tokenizer read from ``tokenizer.ckpt`` (``backbones.tokenizers.pretrained``)."""

    needs_ckpt = True

    def __init__(self, name: str):
        self.name = name

    def check(self, tok: TokenizerConfig) -> None:
        if not tok.ckpt:
            raise ConfigError(
                f"tokenizer.ckpt is required for tokenizer.kind={self.name!r}: the path to its "
                "checkpoint (python -m benchmarks.tokenizer list says where to get it)"
            )
        from backbones.tokenizers.pretrained import resolve_checkpoint

        try:
            path = resolve_checkpoint(self.name, Path(tok.ckpt).expanduser())
        except (FileNotFoundError, KeyError) as err:
            raise ConfigError(f"tokenizer.ckpt: {err}") from None
        check_checkpoint_file(path)

    def geometry(self, tok: TokenizerConfig) -> tuple[int, int, int]:
        spec = get_spec(self.name)
        return spec.codebook_size, spec.code_dim, spec.downsample

    def build(self, tok: TokenizerConfig, load: LoadImages, *, progress: bool = True) -> BuiltTokenizer:
        tokenizer, key = self.load(tok.ckpt)
        return BuiltTokenizer(tokenizer, key, load(tokenizer.in_channels))

    def open(self, tok: TokenizerConfig, recorded: dict, where: str) -> Tokenizer:
        return self.load(tok.ckpt)[0]

    def load(self, ckpt: str) -> tuple[Tokenizer, str]:
        """(frozen tokenizer, cache key from the kind and the checkpoint file's path, size and mtime)."""
        from backbones.tokenizers.pretrained import load_tokenizer, resolve_checkpoint

        tokenizer = load_tokenizer(self.name, ckpt).eval().requires_grad_(False)
        file = resolve_checkpoint(self.name, ckpt).resolve()
        stat = file.stat()
        return tokenizer, content_hash(self.name, str(file), stat.st_size, stat.st_mtime_ns)


for _kind in KINDS:
    register(PretrainedKind(_kind))
