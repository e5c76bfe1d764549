"""Results as data: one row per evaluation cell in ``<run>/metrics.csv`` (long format).

Rows are appended under a file lock by rewriting the file atomically, so concurrent jobs of one
run (a SLURM array) never interleave partial lines, and a killed process never leaves half a
row. A cell is identified by ``CELL_KEY``; a rerun skips cells whose key is already present.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmarks.storage.atomic import atomic_path, locked

COLUMNS = [
    "run", "method", "seed", "step", "images_seen", "train_flops", "train_wall_s", "backbone", "params",
    "tokenizer", "sampler", "steps", "nfe", "temperature", "cfg_scale", "n_samples", "feature_extractor",
    "ref_stats", "fid", "kid_mean", "kid_std", "precision", "recall", "isc", "class_accuracy", "entropy", "eval_wall_s",
    "git_commit",
]
CELL_KEY = ["method", "seed", "step", "sampler", "steps", "temperature", "cfg_scale", "n_samples",
            "feature_extractor", "ref_stats"]


TRACE_COLUMNS = ["method", "seed", "step", "steps", "temperature", "cfg_scale", "t", "entropy"]
TRACE_KEY = TRACE_COLUMNS[:-1]


def key_text(value) -> str:
    """One value of a row identity as text: floats rounded to 6 decimals, whole floats written as
    integers, so a CSV round trip (where an integer column may come back as floats) compares equal."""
    if isinstance(value, float) and not math.isnan(value):
        value = round(value, 6)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def cell_key(row: dict, key: list[str] = CELL_KEY) -> tuple:
    """The identity of a row."""
    return tuple(key_text(row[name]) for name in key)


def read_metrics(path: str | Path, columns: list[str] = COLUMNS) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path)


def done_cells(path: str | Path, key: list[str] = CELL_KEY) -> set[tuple]:
    frame = read_metrics(path)
    return {cell_key(row, key) for row in frame.to_dict("records")}


def append_rows(path: str | Path, rows: list[dict], columns: list[str] = COLUMNS, key: list[str] = CELL_KEY) -> int:
    """Append rows (dicts over ``columns``; missing columns become empty), skipping any whose
    ``key`` is already in the file. Returns the number of rows added."""
    path = Path(path)
    with locked(path):
        frame = read_metrics(path, columns)
        present = {cell_key(r, key) for r in frame.to_dict("records")}
        new = [r for r in rows if cell_key(r, key) not in present]
        if not new:
            return 0
        added = pd.DataFrame([{c: r.get(c) for c in columns} for r in new], columns=columns)
        merged = added if frame.empty else pd.concat([frame.astype(object), added.astype(object)], ignore_index=True)
        with atomic_path(path) as tmp:
            merged.to_csv(tmp, index=False)
    return len(new)
