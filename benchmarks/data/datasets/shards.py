"""``shards``: a data set pre-encoded to code shards (``data.path`` = a folder written by
``python -m benchmarks.encode``, ``benchmarks.data.shards`` format). It has no images: evaluation
needs ``data.reference`` (an image folder or an ADM-style ``.npz``)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.core.config import ConfigError, DataConfig
from benchmarks.data.datasets.registry import DataSet, register
from benchmarks.data.shards import CodeShards, read_meta


@register
class EncodedShards(DataSet):
    name = "shards"
    path = "a folder written by python -m benchmarks.encode"
    encoded = True

    def check(self, data: DataConfig) -> None:
        """meta.json is readable, the encoding finished and every listed shard file exists."""
        super().check(data)
        try:
            meta = read_meta(data.path)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.path: {err}") from None
        missing = [
            entry[name]
            for entry in meta.get("shards", [])
            for name in ("codes", "labels")
            if not (Path(data.path) / entry[name]).is_file()
        ]
        if not meta.get("complete", True) or missing:
            what = (
                f"{len(missing)} shard file(s) are missing, e.g. {missing[0]}"
                if missing
                else "the encoding did not finish"
            )
            raise ConfigError(
                f"data.path: the code shards at {data.path} are incomplete ({what}); rerun "
                "python -m benchmarks.encode for them (it continues where it stopped)"
            )

    def open_shards(self, data: DataConfig) -> CodeShards:
        if not data.path:
            raise ValueError("data.path is required for data.dataset 'shards' (a folder with meta.json)")
        return CodeShards(data.path)
