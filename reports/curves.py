"""Select the curves the report plots from merged results (``reports.load.Results``).

- The *cheap cell* of a variant is the evaluation setting (sampler, steps, temperature, CFG
  scale, sample count, feature extractor, reference statistics) evaluated at every checkpoint:
  among the settings that the run's config lists as ``eval.cells`` with ``at: every`` (``None``
  temperature = ``eval.method_temperature`` of the method, else 1.0), the one with rows at the
  most (seed, step) points, preferring the method's default temperature (a cell without a
  ``temperature``), then Euler, on ties; without such rows, the setting with the most points.
- A *temperature curve* is a cheap cell with another temperature evaluated at every checkpoint of
  the cheap cell (e.g. an ``at: every`` cell at τ = 0.9 for every method).
- The *sampler-steps curve* of a variant is the cheap cell with other sampler step counts at the
  last checkpoint of the cheap cell (e.g. ``at: last`` cells at 5, 10 and 50 steps).
- The *NFE curves* of a variant are the cheap cell with other samplers and step counts at the
  last checkpoint of the cheap cell (FID against network evaluations per sample, per sampler).
- The *temperature sweep* of a variant at a checkpoint is the group of rows at that step that
  share every setting but the temperature and has the most distinct temperatures (at least 2).
- Means over seeds are plain means with the sample standard deviation (ddof = 1; 0 for one seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.storage.run_dir import RunDir
from reports.load import EULER, Results

CELL_COLUMNS = ["sampler", "steps", "temperature", "cfg_scale", "n_samples", "feature_extractor", "ref_stats"]
CURVE_KEY = ["backbone", "variant"]
X_COLUMNS = {
    "step": "training iterations",
    "train_flops": "training FLOPs",
    "train_wall_s": "training wall-clock time (s)",
}


def cell_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in CELL_COLUMNS if c in frame.columns]


def order_variants(variants) -> list[str]:
    """Purrception variants first, then the others, each alphabetically."""
    return sorted(set(variants), key=lambda v: (not (v == "purr" or v.startswith("purr ")), v))


def _configured_cells(config: dict, method: str) -> dict[tuple, bool]:
    """The ``at: every`` cells of a run config as (steps, temperature, cfg_scale, n_samples) ->
    whether the cell takes the method's default temperature (``temperature`` unset)."""
    ev = config.get("eval") or {}
    default_tau = float((ev.get("method_temperature") or {}).get(method, 1.0))
    cells: dict[tuple, bool] = {}
    for c in ev.get("cells") or []:
        if c.get("at", "every") != "every":
            continue
        key = (
            int(c.get("steps", 0)),
            round(float(default_tau if c.get("temperature") is None else c["temperature"]), 6),
            round(float(c.get("cfg_scale", 1.0)), 6),
            int(c.get("num_samples") or ev.get("num_samples") or 0),
        )
        cells[key] = cells.get(key, False) or c.get("temperature") is None
    return cells


def cheap_cells(results: Results) -> pd.DataFrame:
    """One row per (backbone, variant): its cheap cell's settings (``CELL_COLUMNS``) and
    ``points`` (the number of (seed, step) evaluations of it)."""
    m = results.metrics
    cols = cell_columns(m)
    rows = []
    for (backbone, variant), group in m.groupby(CURVE_KEY, sort=True):
        method = group["method"].iloc[0]
        configured: dict[tuple, bool] = {}
        for source in sorted(group["source"].unique()):
            for key, default in _configured_cells(results.config(int(source)), method).items():
                configured[key] = configured.get(key, False) or default
        coverage = (
            group.groupby(cols, dropna=False)[["seed", "step"]]
            .apply(lambda g: len(g.drop_duplicates()))
            .rename("points")
            .reset_index()
        )
        n = coverage["n_samples"] if "n_samples" in coverage else pd.Series(0, index=coverage.index)
        keys = [
            (int(r["steps"]), round(float(r["temperature"]), 6), round(float(r["cfg_scale"]), 6), int(k))
            for (_, r), k in zip(coverage.iterrows(), n.fillna(0))
        ]
        is_configured = pd.Series([k in configured for k in keys], index=coverage.index, dtype=bool)
        coverage["_default"] = [configured.get(k, False) for k in keys]
        coverage["_other"] = coverage["sampler"] != EULER if "sampler" in coverage else False
        pool = coverage[is_configured] if is_configured.any() else coverage
        best = pool.sort_values(
            ["points", "_default", "_other", "steps", "temperature", "cfg_scale"],
            ascending=[False, False, True, False, True, True],
            kind="stable",
        ).iloc[0]
        rows.append(
            {"backbone": backbone, "variant": variant, "method": method, **best.drop(["_default", "_other"]).to_dict()}
        )
    return pd.DataFrame(rows, columns=CURVE_KEY + ["method"] + cols + ["points"])


def _match(frame: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``frame`` whose (backbone, variant, cell settings) are those of ``cells``."""
    keys = CURVE_KEY + cell_columns(frame)
    left = frame.assign(**{c: frame[c].astype(str) for c in keys})
    right = cells[keys].assign(**{c: cells[c].astype(str) for c in keys}).assign(_keep=True)
    merged = left.merge(right, on=keys, how="left")
    return frame[merged["_keep"].fillna(False).to_numpy()]


def convergence(results: Results) -> pd.DataFrame:
    """The cheap-cell rows: one per (backbone, variant, seed, step), sorted, with
    ``method``, ``train_flops``, ``train_wall_s``, ``fid`` and the cell settings."""
    cells = cheap_cells(results)
    if cells.empty:
        return results.metrics.iloc[0:0]
    rows = _match(results.metrics, cells)
    return rows.sort_values(CURVE_KEY + ["seed", "step"]).reset_index(drop=True)


def _same_cell_but(rows: pd.DataFrame, cell: pd.Series, *free: str) -> pd.DataFrame:
    """Rows of one variant with every setting of ``cell`` but those in ``free`` (cell columns)."""
    keep = pd.Series(True, index=rows.index)
    for c in cell_columns(rows):
        if c not in free:
            keep &= rows[c].astype(str) == str(cell[c])
    return rows[keep]


def temperature_curves(results: Results, conv: pd.DataFrame) -> pd.DataFrame:
    """Every temperature curve (see the module docstring), the cheap cell's own included: rows
    like ``convergence``'s, at exactly the cheap cell's (seed, step) points, sorted."""
    found = []
    cells = cheap_cells(results).set_index(CURVE_KEY)
    for (backbone, variant), cheap_rows in conv.groupby(CURVE_KEY, sort=True):
        points = set(zip(cheap_rows["seed"], cheap_rows["step"]))
        here = results.metrics[(results.metrics["backbone"] == backbone) & (results.metrics["variant"] == variant)]
        same = _same_cell_but(here, cells.loc[(backbone, variant)], "temperature")
        for _, rows in same.groupby("temperature", sort=True):
            rows = rows[[p in points for p in zip(rows["seed"], rows["step"])]]
            if len(rows.drop_duplicates(["seed", "step"])) == len(points):
                found.append(rows)
    if not found:
        return conv.iloc[0:0]
    return pd.concat(found).sort_values(CURVE_KEY + ["temperature", "seed", "step"]).reset_index(drop=True)


def best_temperature_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, variant), the temperature curve (``temperature_curves``) with the lowest mean
    FID over seeds at its last checkpoint; its rows, like ``convergence``'s."""
    last = curves.groupby(CURVE_KEY)["step"].transform("max")
    final = curves[curves["step"] == last].groupby(CURVE_KEY + ["temperature"], sort=True)["fid"].mean().reset_index()
    best = final.loc[final.groupby(CURVE_KEY, sort=True)["fid"].idxmin(), CURVE_KEY + ["temperature"]]
    return (
        curves.merge(best, on=CURVE_KEY + ["temperature"])
        .sort_values(CURVE_KEY + ["seed", "step"])
        .reset_index(drop=True)
    )


def steps_curves(results: Results, conv: pd.DataFrame) -> pd.DataFrame:
    """FID against sampler steps at each variant's last cheap-cell checkpoint (the cheap cell with
    every sampler step count evaluated there, by at least one seed): the rows, sorted, with ``steps``
    varying. Variants with a single step count there are left out."""
    found = []
    cells = cheap_cells(results).set_index(CURVE_KEY)
    for (backbone, variant), cheap_rows in conv.groupby(CURVE_KEY, sort=True):
        last = cheap_rows["step"].max()
        m = results.metrics
        here = m[(m["backbone"] == backbone) & (m["variant"] == variant) & (m["step"] == last)]
        rows = _same_cell_but(here, cells.loc[(backbone, variant)], "steps")
        if rows["steps"].nunique() >= 2:
            found.append(rows)
    if not found:
        return conv.iloc[0:0]
    return pd.concat(found).sort_values(CURVE_KEY + ["steps", "seed"]).reset_index(drop=True)


NFE_BUDGETS = (8, 16, 32)
"""The inference budgets (network passes per sample) of the best-sampler table."""


def nfe_curves(results: Results, conv: pd.DataFrame) -> pd.DataFrame:
    """FID against NFE per sampler at each variant's last cheap-cell checkpoint: the rows there
    with the cheap cell's settings but the sampler and its steps (so its NFE), for variants
    evaluated there with at least two samplers. Sorted by variant, sampler, NFE and seed."""
    found = []
    cells = cheap_cells(results).set_index(CURVE_KEY)
    m = results.metrics
    for (backbone, variant), cheap_rows in conv.groupby(CURVE_KEY, sort=True):
        here = m[(m["backbone"] == backbone) & (m["variant"] == variant) & (m["step"] == cheap_rows["step"].max())]
        rows = _same_cell_but(here, cells.loc[(backbone, variant)], "sampler", "steps")
        if rows["sampler"].nunique() >= 2:
            found.append(rows)
    if not found:
        return conv.iloc[0:0]
    return pd.concat(found).sort_values(CURVE_KEY + ["sampler", "nfe", "seed"]).reset_index(drop=True)


def mean_nfe_curve(rows: pd.DataFrame) -> pd.DataFrame:
    """``nfe_curves`` rows as means over seeds per (backbone, variant, sampler, steps): columns
    backbone, variant, sampler, steps, nfe (mean over seeds: an adaptive sampler's varies), mean
    and std of FID, n_seeds."""
    keys = CURVE_KEY + ["sampler", "steps"]
    curve = (
        rows.groupby(keys, sort=True)
        .agg(nfe=("nfe", "mean"), mean=("fid", "mean"), std=("fid", "std"), n_seeds=("seed", "nunique"))
        .reset_index()
    )
    curve["std"] = curve["std"].fillna(0.0)
    return curve.sort_values(CURVE_KEY + ["sampler", "nfe"]).reset_index(drop=True)


def mean_curve(rows: pd.DataFrame, x: str = "step", value: str = "fid") -> pd.DataFrame:
    """Mean and s.d. over seeds at each (backbone, variant, step): columns backbone, variant,
    step, ``x`` (mean over seeds, e.g. wall-clock seconds), mean, std, n_seeds."""
    keys = CURVE_KEY + ["step"]
    agg = (
        rows.groupby(keys, sort=True)
        .agg(x_mean=(x, "mean"), mean=(value, "mean"), std=(value, "std"), n_seeds=("seed", "nunique"))
        .reset_index()
    )
    agg["std"] = agg["std"].fillna(0.0)
    out = agg.rename(columns={"x_mean": x}) if x != "step" else agg.drop(columns="x_mean")
    return out[keys + ([x] if x != "step" else []) + ["mean", "std", "n_seeds"]]


def seed_matrix(
    rows: pd.DataFrame, x: str = "step", *, keep_missing: bool = False
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One variant's curves on the checkpoints every seed has: (x (P,), fid (S, P), seeds).
    ``x`` is the mean over seeds of column ``x`` at each of those checkpoints. A checkpoint with a
    missing (NaN) FID is dropped, unless ``keep_missing``: then it is kept (as NaN) where every seed
    has a row there, so the last checkpoint stays the last one."""
    fid = rows.pivot_table(index="seed", columns="step", values="fid", aggfunc="first", dropna=False)
    if keep_missing:
        present = rows.pivot_table(index="seed", columns="step", values="method", aggfunc="size", fill_value=0)
        fid = fid.reindex(index=present.index, columns=present.columns)
        fid = fid.loc[:, (present > 0).all(axis=0)]
    else:
        fid = fid.dropna(axis=1)
    if x == "step":
        xs = fid.columns.to_numpy(float)
    else:
        xs = rows.pivot_table(index="seed", columns="step", values=x, aggfunc="first", dropna=False)
        xs = xs.reindex(columns=fid.columns).mean(axis=0).to_numpy(float)
    return xs, fid.to_numpy(float), [int(s) for s in fid.index]


def _sweep_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of the largest temperature sweep among ``rows`` (one variant, one step), or none."""
    keys = [c for c in cell_columns(rows) if c != "temperature"]
    best, best_key = rows.iloc[0:0], None
    for _, group in rows.groupby(keys, dropna=False, sort=True):
        n = group["temperature"].nunique()
        rank = (n, group["steps"].iloc[0])
        if n >= 2 and (best_key is None or rank > best_key):
            best, best_key = group, rank
    return best


def sweeps(results: Results, step: int | None = None) -> pd.DataFrame:
    """Temperature-sweep rows per (backbone, variant), all seeds: at ``step`` if given, else at
    the variant's last step with a sweep. Adds ``sweep_step``. Raises ValueError if ``step`` is
    given and no variant has a sweep there (naming the steps that have one)."""
    found, steps_with = [], set()
    for _, group in results.metrics.groupby(CURVE_KEY, sort=True):
        candidates = sorted(group["step"].unique(), reverse=True)
        for s in candidates:
            sweep = _sweep_groups(group[group["step"] == s])
            if sweep.empty:
                continue
            steps_with.add(int(s))
            if step is None or int(s) == step:
                found.append(sweep.assign(sweep_step=int(s)))
                if step is None:
                    break
    if step is not None and not found:
        listed = ", ".join(map(str, sorted(steps_with))) or "none"
        raise ValueError(f"no temperature sweep at step {step}; steps with a sweep: {listed}")
    if not found:
        return results.metrics.iloc[0:0].assign(sweep_step=pd.Series(dtype=int))
    return pd.concat(found, ignore_index=True)


def sweep_curve(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean/s.d. FID over seeds per (backbone, variant, temperature) of sweep rows."""
    keys = CURVE_KEY + ["sweep_step", "steps", "temperature"]
    agg = (
        rows.groupby(keys, sort=True)
        .agg(mean=("fid", "mean"), std=("fid", "std"), n_seeds=("seed", "nunique"))
        .reset_index()
    )
    agg["std"] = agg["std"].fillna(0.0)
    return agg


def entropy_traces(results: Results, step: int | None = None) -> pd.DataFrame:
    """Mean entropy over seeds per (backbone, variant, temperature, t) at ``step`` (default: the
    variant's last step with traces), for the (sampler, steps, cfg_scale) setting with the most
    temperatures (Euler's first on ties). Columns: backbone, variant, step, steps, cfg_scale,
    temperature, t, entropy, n_seeds."""
    tr = results.traces
    out = []
    for (backbone, variant), group in tr.groupby(CURVE_KEY, sort=True):
        at = group["step"].max() if step is None else step
        here = group[group["step"] == at]
        if here.empty:
            continue
        settings = here.groupby(["sampler", "steps", "cfg_scale"])["temperature"].nunique().reset_index()
        settings["other"] = settings["sampler"] != EULER
        chosen = settings.sort_values(
            ["temperature", "other", "steps", "cfg_scale"], ascending=[False, True, False, True]
        ).iloc[0]
        rows = here[
            (here["sampler"] == chosen["sampler"])
            & (here["steps"] == chosen["steps"])
            & (here["cfg_scale"] == chosen["cfg_scale"])
        ]
        agg = (
            rows.groupby(["temperature", "t"], sort=True)
            .agg(entropy=("entropy", "mean"), n_seeds=("seed", "nunique"))
            .reset_index()
        )
        out.append(
            agg.assign(
                backbone=backbone,
                variant=variant,
                step=int(at),
                steps=int(chosen["steps"]),
                cfg_scale=float(chosen["cfg_scale"]),
            )
        )
    columns = CURVE_KEY + ["step", "steps", "cfg_scale", "temperature", "t", "entropy", "n_seeds"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def sample_grids(
    results: Results,
    backbone: str,
    variant: str,
    step: int,
    steps: int,
    cfg_scale: float = 1.0,
    n_samples: int | None = None,
) -> pd.DataFrame:
    """The sample grids (``benchmarks.storage.run_dir.RunDir.grids``) of one variant at one
    checkpoint and sampler setting (and sample count, where the grid records one), from its lowest
    seed that has grids at two or more temperatures: columns seed, temperature, path, source and
    layout (a ``GridLayout``, or None: shown whole); one row per temperature, sorted."""
    found = []
    for (source, method), label in sorted(results.labels.items()):
        run = results.runs[source]
        if label != variant or run.backbone != backbone:
            continue
        for grid in RunDir(run.path).grids(method, run.manifest):
            same_n = n_samples is None or grid.n_samples is None or grid.n_samples == n_samples
            if grid.step == step and grid.steps == steps and abs(grid.cfg_scale - cfg_scale) < 1e-9 and same_n:
                found.append(
                    {
                        "seed": grid.seed,
                        "temperature": grid.temperature,
                        "path": grid.path,
                        "source": source,
                        "layout": grid.layout,
                    }
                )
    frame = pd.DataFrame(found, columns=["seed", "temperature", "path", "source", "layout"])
    counts = frame.groupby("seed")["temperature"].nunique()
    seeds = sorted(counts[counts >= 2].index)
    if not seeds:
        return frame.iloc[0:0]
    chosen = frame[frame["seed"] == seeds[0]].sort_values(["temperature", "source"], kind="stable")
    return chosen.drop_duplicates("temperature").reset_index(drop=True)


def image_array(path: Path) -> np.ndarray:
    """A PNG as an (H, W[, C]) float array in [0, 1]."""
    import matplotlib.image

    return matplotlib.image.imread(str(path))
