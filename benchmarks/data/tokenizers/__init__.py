"""Tokenizers: the registry (``benchmarks.data.tokenizers.registry``) and the built-in kinds: the
suite's ``vqvae`` and the pretrained kinds of ``backbones.tokenizers.pretrained``; importing this
package registers them. A new kind is one module with ``@register`` (here, or a plugin module)."""

from benchmarks.data.tokenizers import pretrained, vqvae  # noqa: F401  (built-ins register)
from benchmarks.data.tokenizers.registry import (
    REGISTRY,
    BuiltTokenizer,
    TokenizerKind,
    get_tokenizer,
    register,
    tokenizer_names,
)

__all__ = ["BuiltTokenizer", "TokenizerKind", "get_tokenizer", "register", "REGISTRY", "tokenizer_names"]
