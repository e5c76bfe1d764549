"""Code shards: a dataset encoded once to code indices, shared by every method and backbone.

Format of a shard folder (readable with numpy alone)::

    SHARD_DIR/
      meta.json               {"format": 1, "grid": [h, w], "codebook_size": K,
                               "num_classes": N, "tokenizer": {...}, "shards": [...], ...}
      codes-00000.npy         uint16 (n_0, h, w)   code indices in [0, K)
      labels-00000.npy        int32  (n_0,)        class labels in [0, N)
      codes-00001.npy ...

``meta.json`` is written last (atomically), listing the shard files in order with their counts;
a shard file is only listed once it is complete, so an interrupted writer leaves a folder a
resumed writer can continue. Training memory-maps the arrays (``np.load(mmap_mode="r")``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.storage.atomic import save_json, save_npy

FORMAT_VERSION = 1


def write_shard(out_dir: str | Path, index: int, codes: np.ndarray, labels: np.ndarray) -> dict:
    """Atomically write one shard pair; returns its entry for ``meta.json``."""
    out_dir = Path(out_dir)
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must be (n, h, w), got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.uint16).max):
        raise ValueError("code indices must fit in uint16")
    labels = np.asarray(labels)
    if labels.shape != (codes.shape[0],):
        raise ValueError(f"labels must be ({codes.shape[0]},), got {labels.shape}")
    names = {"codes": f"codes-{index:05d}.npy", "labels": f"labels-{index:05d}.npy"}
    save_npy(codes.astype(np.uint16), out_dir / names["codes"])
    save_npy(labels.astype(np.int32), out_dir / names["labels"])
    return {"index": index, "count": int(codes.shape[0]), **names}


def write_meta(
    out_dir: str | Path, *, grid: tuple[int, int], codebook_size: int, num_classes: int, shards: list[dict], **extra
) -> None:
    meta = {
        "format": FORMAT_VERSION,
        "grid": list(grid),
        "codebook_size": int(codebook_size),
        "num_classes": int(num_classes),
        "count": int(sum(s["count"] for s in shards)),
        "shards": sorted(shards, key=lambda s: s["index"]),
        **extra,
    }
    save_json(meta, Path(out_dir) / "meta.json")


def read_meta(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no code shards at {shard_dir}: {path} is missing (create shards with `python -m benchmarks.encode`)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported shard format {meta.get('format')!r} (expected {FORMAT_VERSION})")
    return meta


@dataclass
class CodeShards:
    """All shards of a folder, memory-mapped, indexable as one dataset.

    ``batch(idx)`` gathers codes (B, h, w) and labels (B,) int64 for a LongTensor of global
    indices; codes are int64, or ``codes_dtype`` (int32 holds every uint16 code in half the bytes).
    """

    shard_dir: Path
    meta: dict

    def __init__(self, shard_dir: str | Path):
        self.shard_dir = Path(shard_dir)
        self.meta = read_meta(self.shard_dir)
        self._codes = [np.load(self.shard_dir / s["codes"], mmap_mode="r") for s in self.meta["shards"]]
        self._labels = [np.load(self.shard_dir / s["labels"], mmap_mode="r") for s in self.meta["shards"]]
        self._offsets = np.cumsum([0] + [len(c) for c in self._codes])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.meta["grid"])

    @property
    def codebook_size(self) -> int:
        return self.meta["codebook_size"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    def labels(self) -> np.ndarray:
        """All labels, (n,) int64 (reads the small label files fully)."""
        return np.concatenate([np.asarray(lab, dtype=np.int64) for lab in self._labels])

    def batch(self, idx: torch.Tensor, codes_dtype: np.dtype = np.int64) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx.cpu(), dtype=np.int64)
        shard = np.searchsorted(self._offsets, idx, side="right") - 1
        local = idx - self._offsets[shard]
        h, w = self.grid
        codes = np.empty((len(idx), h, w), dtype=codes_dtype)
        labels = np.empty(len(idx), dtype=np.int64)
        for s in np.unique(shard):
            sel = shard == s
            codes[sel] = self._codes[s][local[sel]]
            labels[sel] = self._labels[s][local[sel]]
        return torch.from_numpy(codes), torch.from_numpy(labels)
