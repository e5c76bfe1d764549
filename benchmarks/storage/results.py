"""Results as data: one row per evaluation cell in ``<run>/metrics.csv`` (long format).

Rows are appended under a file lock by rewriting the file atomically, so concurrent jobs of one
run (a SLURM array) never interleave partial lines, and a killed process never leaves half a
row. A cell is identified by ``CELL_KEY``; a rerun skips cells whose key is already present.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pandas as pd

from benchmarks.storage.atomic import atomic_path, locked

LEAD_COLUMNS = [
    "run",
    "method",
    "seed",
    "step",
    "images_seen",
    "train_flops",
    "train_wall_s",
    "backbone",
    "params",
    "tokenizer",
    "sampler",
    "steps",
    "nfe",
    "temperature",
    "cfg_scale",
    "n_samples",
    "feature_extractor",
    "ref_stats",
]
"""The columns of a ``metrics.csv`` row before its metric columns: the cell and where it comes from."""
TAIL_COLUMNS = ["entropy", "sample_s_per_image", "sample_cpu_s_per_image", "eval_wall_s", "git_commit"]
"""The columns after the metric columns: the mean entropy along the sampler, the sampler's own
seconds per image (wall, and process CPU time, which holds on a shared machine; decoding and
feature extraction excluded) and the whole cell's wall seconds."""


def metrics_csv_columns(metric_columns: list[str]) -> list[str]:
    """The header of a new ``metrics.csv`` with these metric columns (the evaluation's metric
    registry names them; this floor does not know them)."""
    return LEAD_COLUMNS + list(metric_columns) + TAIL_COLUMNS


CELL_KEY = [
    "method",
    "seed",
    "step",
    "sampler",
    "steps",
    "temperature",
    "cfg_scale",
    "n_samples",
    "feature_extractor",
    "ref_stats",
]


TRACE_COLUMNS = ["method", "seed", "step", "sampler", "steps", "temperature", "cfg_scale", "t", "entropy"]
TRACE_KEY = TRACE_COLUMNS[:-1]


class MetricsFileError(ValueError):
    """A results CSV that cannot be read back as written (a hand-edited or damaged line); the
    message names the file, the line and the fix."""


def key_text(value) -> str:
    """One value of a row identity as text: numbers (and numeric text read back from a CSV)
    rounded to 6 decimals, whole numbers written as integers, missing values as ''. So a value
    in memory (``np.float64(0.125)``, ``3``) and the same value read back (``'0.125'``, ``'3.0'``)
    compare equal."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # numpy scalars included
        value = float(value)
        if math.isnan(value):
            return ""
        value = round(value, 6)
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def cell_key(row: dict, key: list[str] = CELL_KEY) -> tuple:
    """The identity of a row (a column the row lacks, as in a file written before the column
    existed, reads as missing)."""
    return tuple(key_text(row.get(name)) for name in key)


INTEGER_COLUMNS = ("seed", "step")
"""Columns every row must hold as a whole number (a check that the file was not damaged)."""


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as the text of each cell) of a results CSV; ([], []) if it does not exist.
    Raises MetricsFileError naming the line if a row has the wrong number of fields or a
    non-integer ``seed``/``step``."""
    path = Path(path)
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    if not lines:
        return [], []
    header, rows = lines[0], []
    for number, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        row = dict(zip(header, fields))
        bad = len(fields) != len(header) or any(
            name in row and not re.fullmatch(r"-?\d+", row[name]) for name in INTEGER_COLUMNS
        )
        if bad:
            raise MetricsFileError(
                f"{path} line {number} is not a row of this file ({len(fields)} fields for {len(header)} columns: "
                f"{','.join(fields)[:80]!r}); delete that line (a missing evaluation cell is recomputed on the "
                "next run) or restore the file"
            )
        rows.append(row)
    return header, rows


def read_metrics(path: str | Path, columns: list[str] = LEAD_COLUMNS) -> pd.DataFrame:
    """The results as a DataFrame (checked line by line first, see ``read_rows``); no file: an
    empty frame with ``columns``."""
    path = Path(path)
    header, _ = read_rows(path)
    if not header:
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path)


def done_cells(path: str | Path, key: list[str] = CELL_KEY) -> set[tuple]:
    return {cell_key(row, key) for row in read_rows(path)[1]}


def cell_text(value) -> str:
    """A new cell as CSV text: missing values (None, NaN) empty, floats in their shortest exact form."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):  # numpy floats included
        return repr(float(value))
    return str(value)


def append_rows(path: str | Path, rows: list[dict], columns: list[str] | None = None, key: list[str] = CELL_KEY) -> int:
    """Append rows (dicts over ``columns``, default: the rows' keys in order of appearance; missing
    columns become empty), skipping any whose ``key`` is already in the file. Returns the number
    of rows added.

    Existing rows are copied as text, never re-typed (a ``seed`` column stays ``0``, not
    ``0.0``); columns missing from an older file's header are added at the end, empty in its rows."""
    path = Path(path)
    if columns is None:
        columns = list(dict.fromkeys(c for r in rows for c in r))
    with locked(path):
        header, existing = read_rows(path)
        present = {cell_key(r, key) for r in existing}
        new = []
        for r in rows:
            identity = cell_key(r, key)
            if identity not in present:
                present.add(identity)
                new.append({c: cell_text(r.get(c)) for c in columns})
        if not new:
            return 0
        _rewrite(path, header + [c for c in columns if c not in header], existing + new)
    return len(new)


def upsert_row(path: str | Path, row: dict, columns: list[str], key: list[str]) -> bool:
    """Write ``row`` into the CSV at ``path``, replacing the row with the same ``key`` if there is
    one (in place) or appending it. Returns whether a row was replaced."""
    path = Path(path)
    with locked(path):
        header, existing = read_rows(path)
        identity = cell_key(row, key)
        text = {c: cell_text(row.get(c)) for c in columns}
        kept = [r for r in existing if cell_key({k: r.get(k, "") for k in key}, key) != identity]
        replaced = len(kept) < len(existing)
        at = next((i for i, r in enumerate(existing) if r not in kept), len(kept))
        _rewrite(path, header + [c for c in columns if c not in header], kept[:at] + [text] + kept[at:])
    return replaced


def _rewrite(path: Path, header: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def final_rows(metrics: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The rows a run's end-of-run summary shows: per method, its rows at its last checkpoint of
    the first ``at: every`` cell of ``config`` (the resolved config as the manifest stores it; a
    cell without a temperature takes ``eval.method_temperature`` of the method, else 1.0), or of
    every cell there if the config lists none."""
    if metrics.empty:
        return metrics
    ev = config.get("eval") or {}
    every = [c for c in ev.get("cells") or [] if c.get("at", "every") == "every"]
    found = []
    for method, rows in metrics.groupby("method", sort=False):
        if every:
            cell = every[0]
            tau = cell.get("temperature")
            tau = (ev.get("method_temperature") or {}).get(method, 1.0) if tau is None else tau
            n = cell.get("num_samples") or ev.get("num_samples")
            keep = (
                (rows["steps"] == cell.get("steps"))
                & ((rows["temperature"] - tau).abs() < 1e-9)
                & ((rows["cfg_scale"] - cell.get("cfg_scale", 1.0)).abs() < 1e-9)
            )
            if n is not None and "n_samples" in rows:
                keep &= rows["n_samples"] == n
            rows = rows[keep] if keep.any() else rows
        found.append(rows[rows["step"] == rows["step"].max()])
    return pd.concat(found, ignore_index=True)
