"""The project cache: one folder for everything derived (MNIST arrays, tokenizers, code shards,
feature extractors, reference statistics).

Location: ``$VQFLOW_CACHE`` if set, else ``$XDG_CACHE_HOME/vqflow``, else ``~/.cache/vqflow``.
Entries are keyed by content hashes of their inputs, so a changed dataset or config never
reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache root (or a sub-folder of it), created on first use."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_root() -> Path:
    """``$VQFLOW_CACHE``, else ``$XDG_CACHE_HOME/vqflow`` (the XDG base-directory rule: set and
    absolute), else ``~/.cache/vqflow``."""
    if os.environ.get("VQFLOW_CACHE"):
        return Path(os.environ["VQFLOW_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "vqflow"


def content_hash(*items, length: int = 16) -> str:
    """A stable hex digest of JSON-able items, bytes and files (by path content)."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, bytes):
            h.update(item)
        elif isinstance(item, Path):
            with open(item, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:length]
