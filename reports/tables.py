"""The report's tables as DataFrames of display strings (rows sorted; no paths, no times).

- ``results_table``: per (backbone, variant): seeds, final checkpoint, cheap cell, final FID
  (mean ± s.d. over seeds at the last checkpoint every seed has), parameters, training FLOPs
  per step, training wall-clock seconds to that checkpoint (mean over seeds), and the best
  temperature of the sweep with its FID.
  The final class accuracy (fraction of samples the evaluation classifier assigns to their
  label; mean ± s.d. over seeds at the same checkpoint) sits beside the final FID.
- ``floor_table``: the distinct tokenizer reconstruction floors (with the reconstructions' class
  accuracy: the ceiling for samples).
- ``speedup_table``: every Purrception variant against every other variant of the same backbone
  and recipe (see ``reports.speedup`` for the definitions), at the targets a baseline reaches with
  1/4, 1/2 and all of its budget, in iterations and in training FLOPs, for given curves (each
  method's default-temperature curves, or its best-temperature ones).
- ``other_cells_table``: evaluations that are neither the cheap cell nor the sweep (e.g. the final
  CFG cell), mean over seeds.
- ``variants_table``: what each variant label stands for, when runs with different settings merge.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reports.curves import (
    CURVE_KEY,
    NFE_BUDGETS,
    cell_columns,
    mean_nfe_curve,
    order_variants,
    seed_matrix,
    sweep_curve,
)
from reports.load import EULER, Results
from reports.speedup import FRACTIONS, bootstrap_interval, format_interval, format_speedup, speedup


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G, T, P, E); NaN -> '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    for prefix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(value) < 1000 or prefix == "E":
            text = f"{value:.0f}" if prefix == "" and value == int(value) else f"{value:.3g}"
            return f"{text}{prefix}{unit}"
        value /= 1000.0
    raise AssertionError("unreachable")


def mean_sd(values, digits: int = 2) -> str:
    values = np.asarray(values, float)
    if len(values) == 0 or np.all(np.isnan(values)):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.nanmean(values):.{digits}f} ± {np.nanstd(values, ddof=1):.{digits}f}"


def _is_purr(variant: str) -> bool:
    return variant == "purr" or variant.startswith("purr ")


def _first_valid(*values) -> float:
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return float("nan")


def results_table(results: Results, conv: pd.DataFrame, sweep_rows: pd.DataFrame) -> pd.DataFrame:
    rows = []
    best = sweep_curve(sweep_rows) if not sweep_rows.empty else pd.DataFrame(columns=["backbone", "variant"])
    for (backbone, variant), group in conv.groupby(["backbone", "variant"], sort=True):
        steps, fid, seeds = seed_matrix(group, keep_missing=True)
        if fid.shape[1] == 0:
            continue
        final_step = int(steps[-1])
        at_final = group[group["step"] == final_step]
        jobs = results.jobs[(results.jobs["backbone"] == backbone) & (results.jobs["variant"] == variant)]
        flops_per_step = _first_valid(
            jobs["flops_per_step"].mean() if not jobs.empty else None,
            (at_final["train_flops"] / final_step).mean() if "train_flops" in at_final else None,
        )
        params = _first_valid(
            at_final["params"].iloc[0] if "params" in at_final else None,
            jobs["params"].iloc[0] if not jobs.empty else None,
        )
        b = best[(best["backbone"] == backbone) & (best["variant"] == variant)]
        if b.empty:
            best_tau, best_fid = "-", "-"
        else:
            top = b.loc[b["mean"].idxmin()]
            best_tau = f"{top['temperature']:g} (step {int(top['sweep_step'])}, {int(top['steps'])} steps)"
            sweep_fids = sweep_rows[
                (sweep_rows["backbone"] == backbone)
                & (sweep_rows["variant"] == variant)
                & (sweep_rows["temperature"] == top["temperature"])
            ]["fid"]
            best_fid = mean_sd(sweep_fids)
        cell = group.iloc[0]
        rows.append(
            {
                "backbone": backbone,
                "variant": variant,
                "seeds": len(seeds),
                "final step": final_step,
                "cell (τ, steps, CFG, samples)": f"{cell['temperature']:g}, {int(cell['steps'])}, "
                f"{cell['cfg_scale']:g}, {int(cell['n_samples'])}"
                if "n_samples" in cell
                else f"{cell['temperature']:g}, {int(cell['steps'])}, {cell['cfg_scale']:g}",
                "final FID": final_fid(fid[:, -1]),
                "final class acc.": final_class_accuracy(at_final),
                "params": human(params),
                "FLOPs/step": human(flops_per_step),
                "train wall s": mean_sd(at_final["train_wall_s"], 1) if "train_wall_s" in at_final else "-",
                "best τ": best_tau,
                "FID at best τ": best_fid,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {v: i for i, v in enumerate(order_variants(frame["variant"]))}
    return frame.sort_values(
        ["backbone", "variant"], key=lambda s: s.map(order) if s.name == "variant" else s, kind="stable"
    ).reset_index(drop=True)


def final_fid(values: np.ndarray) -> str:
    """Mean ± s.d. over seeds of the FID at the last checkpoint, saying how many seeds have none."""
    missing = int(np.isnan(values).sum())
    if missing == 0:
        return mean_sd(values)
    if missing == len(values):
        return "missing (NaN)"
    return f"{mean_sd(values[~np.isnan(values)])} (NaN for {missing} of {len(values)} seeds)"


def final_class_accuracy(at_final: pd.DataFrame) -> str:
    """Mean ± s.d. over seeds of the cheap cell's class accuracy at the final checkpoint; '-' when
    not measured (an extractor without class logits, or results from before the metric existed)."""
    if "class_accuracy" not in at_final:
        return "-"
    return mean_sd(at_final.drop_duplicates("seed")["class_accuracy"], 3)


def floor_table(results: Results) -> pd.DataFrame:
    rows = []
    for _, f in results.floors.iterrows():

        def num(key, digits=3, f=f):
            v = f.get(key)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"

        rows.append(
            {
                "tokenizer": str(f["tokenizer"]),
                "FID": num("fid", 2),
                "KID": num("kid_mean", 4),
                "precision": num("precision"),
                "recall": num("recall"),
                "class acc.": num("class_accuracy"),
                "PSNR (dB)": num("psnr", 2),
                "samples": "-" if pd.isna(f["n_samples"]) else str(int(f["n_samples"])),
                "feature extractor": str(f["feature_extractor"]),
                "reference": str(f["ref_stats"]),
                "runs": f["runs"],
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True) if not frame.empty else frame


BUDGET_LABELS = {0.25: "1/4", 0.5: "1/2", 1.0: "all"}
SPEEDUP_COLUMNS = [
    "backbone",
    "Purrception",
    "baseline",
    "τ (P/B)",
    "seeds (P/B)",
    "budget",
    "target FID",
    "baseline iters",
    "Purrception iters",
    "speed-up (iters)",
    "95% CI (iters)",
    "speed-up (FLOPs)",
    "95% CI (FLOPs)",
]


def speedup_table(curves: pd.DataFrame, variants: pd.DataFrame, fractions=FRACTIONS) -> pd.DataFrame:
    """Speed-ups of every Purrception variant over every other variant with the same backbone and
    recipe (``variants``: ``Results.variants``), one row per budget fraction of the baseline.
    ``curves``: one curve per variant, rows like ``reports.curves.convergence``'s (e.g. the cheap
    cells, or ``best_temperature_curves``). A fraction whose budget lies before the baseline's first
    checkpoint has no target and no row."""
    recipe = {(b, v): r for b, v, r in zip(variants["backbone"], variants["variant"], variants["recipe"])}
    rows = []
    for backbone in sorted(curves["backbone"].unique()) if not curves.empty else []:
        here = curves[curves["backbone"] == backbone]
        names = order_variants(here["variant"])
        for purr in filter(_is_purr, names):
            p_rows = here[here["variant"] == purr]
            for base in (
                v for v in names if not _is_purr(v) and recipe.get((backbone, v)) == recipe.get((backbone, purr))
            ):
                b_rows = here[here["variant"] == base]
                for fraction in fractions:
                    row = _speedup_row(p_rows, b_rows, fraction)
                    if row:
                        rows.append(
                            {
                                "backbone": backbone,
                                "Purrception": purr,
                                "baseline": base,
                                "τ (P/B)": f"{p_rows['temperature'].iloc[0]:g}/{b_rows['temperature'].iloc[0]:g}",
                                "budget": BUDGET_LABELS.get(fraction, f"{fraction:g}"),
                                **row,
                            }
                        )
    return pd.DataFrame(rows, columns=SPEEDUP_COLUMNS)


def best_temperature_speedup_table(
    curves: pd.DataFrame, variants: pd.DataFrame, sweep_rows: pd.DataFrame
) -> pd.DataFrame:
    """``speedup_table`` of the best-temperature curves (``reports.curves.best_temperature_curves``)
    with a column ``sweep's best τ (P/B)``: the best temperatures of the last-checkpoint sweep, which
    differ from the curves' where the sweep's best was not evaluated along training."""
    table = speedup_table(curves, variants)
    best = {}
    if not sweep_rows.empty:
        means = sweep_curve(sweep_rows)
        for (backbone, variant), group in means.groupby(["backbone", "variant"], sort=True):
            best[(backbone, variant)] = f"{group.loc[group['mean'].idxmin(), 'temperature']:g}"
    table.insert(
        4,
        "sweep's best τ (P/B)",
        [
            f"{best.get((b, p), '-')}/{best.get((b, v), '-')}"
            for b, p, v in zip(table["backbone"], table["Purrception"], table["baseline"])
        ],
    )
    return table


def _speedup_row(p_rows: pd.DataFrame, b_rows: pd.DataFrame, fraction: float) -> dict:
    """The speed-up columns of one (Purrception, baseline, budget fraction); {} if there is no target."""
    row = {}
    for axis, label in (("step", "iters"), ("train_flops", "FLOPs")):
        p_x, p_fid, p_seeds = seed_matrix(p_rows, axis)
        b_x, b_fid, b_seeds = seed_matrix(b_rows, axis)
        if p_fid.shape[1] == 0 or b_fid.shape[1] == 0 or np.isnan(np.r_[p_x, b_x]).any():
            continue  # no common checkpoints, or the x axis is not recorded
        if fraction * b_x[-1] < b_x[0]:
            return {}  # the baseline has no checkpoint that early
        point = speedup(p_x, p_fid, b_x, b_fid, fraction)
        bounds = bootstrap_interval(p_x, p_fid, b_x, b_fid, fraction)
        if axis == "step":
            row.update(
                {
                    "target FID": f"{point.target:.2f}",
                    "baseline iters": f"{point.baseline_x:,.0f}",
                    "Purrception iters": ("" if point.kind == "exact" else "<=" if point.kind == "at_least" else ">")
                    + f"{point.purr_x:,.0f}",
                }
            )
        row[f"speed-up ({label})"] = format_speedup(point)
        row[f"95% CI ({label})"] = format_interval(bounds)
        row["seeds (P/B)"] = f"{len(p_seeds)}/{len(b_seeds)}"
    return row


def variants_table(results: Results) -> pd.DataFrame:
    """Variants whose runs differ in settings: the label, its runs and the full settings."""
    v = results.variants
    v = v[(v["options"] != "") | (v["recipe"] != "")]
    rows = [
        {
            "backbone": r.backbone,
            "variant": r.variant,
            "runs": r.runs,
            "settings": ", ".join(p for p in (r.options, r.recipe) if p),
        }
        for r in v.itertuples()
    ]
    frame = pd.DataFrame(rows, columns=["backbone", "variant", "runs", "settings"])
    order = {name: i for i, name in enumerate(order_variants(frame["variant"]))}
    return frame.sort_values(
        ["backbone", "variant"], key=lambda s: s.map(order) if s.name == "variant" else s, kind="stable"
    ).reset_index(drop=True)


def other_cells_table(results: Results, conv: pd.DataFrame, sweep_rows: pd.DataFrame) -> pd.DataFrame:
    """Evaluations that are neither the cheap cell nor the temperature sweep (e.g. an ``at: last``
    cell with CFG and more steps and samples: the paper's headline setting), mean over seeds."""
    cols = cell_columns(results.metrics)

    def ident(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
        return frame[columns].astype(str).agg("|".join, axis=1) if len(frame) else pd.Series(dtype=str)

    key = ["backbone", "variant", "step", *cols]
    several_samplers = "sampler" in results.metrics and results.metrics["sampler"].nunique() > 1
    known = set(ident(conv, key)) | set(ident(sweep_rows, key))
    rest = results.metrics[~ident(results.metrics, key).isin(known)] if len(results.metrics) else results.metrics
    rows = []
    for values, group in rest.groupby(["backbone", "variant", "step", *cols], sort=True, dropna=False):
        setting = dict(zip(["backbone", "variant", "step", *cols], values))
        rows.append(
            {
                "backbone": setting["backbone"],
                "variant": setting["variant"],
                "step": int(setting["step"]),
                "τ": f"{setting['temperature']:g}",
                **({"sampler": setting["sampler"], "NFE": f"{group['nfe'].mean():g}"} if several_samplers else {}),
                "steps": int(setting["steps"]),
                "CFG": f"{setting['cfg_scale']:g}",
                "samples": str(int(setting["n_samples"])) if "n_samples" in setting else "-",
                "seeds": group["seed"].nunique(),
                "FID": mean_sd(group["fid"]),
                **{
                    label: (f"{group[c].mean():.3f}" if c in group and group[c].notna().any() else "-")
                    for label, c in (
                        ("precision", "precision"),
                        ("recall", "recall"),
                        ("IS", "isc"),
                        ("class acc.", "class_accuracy"),
                    )
                },
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {v: i for i, v in enumerate(order_variants(frame["variant"]))}
    return frame.sort_values(
        ["backbone", "variant", "step", "steps", "CFG", "τ"],
        key=lambda s: s.map(order) if s.name == "variant" else s,
        kind="stable",
    ).reset_index(drop=True)


def best_within_nfe_table(rows: pd.DataFrame, budgets=NFE_BUDGETS) -> pd.DataFrame:
    """Per variant and inference budget B: the sampler setting with the lowest mean FID over seeds
    among those whose mean NFE is at most B (``reports.curves.nfe_curves`` rows), with its NFE and
    FID as mean ± s.d., and beside it Euler's best within B (the comparison before the sampler was
    an axis); '-' where no setting fits the budget."""
    curve = mean_nfe_curve(rows)
    out = []
    for (backbone, variant), here in curve.groupby(CURVE_KEY, sort=True):
        for budget in budgets:
            fits = here[here["nfe"] <= budget]
            best, euler = _lowest_fid(fits), _lowest_fid(fits[fits["sampler"] == EULER])
            out.append(
                {
                    "backbone": backbone,
                    "variant": variant,
                    "NFE budget": budget,
                    "sampler": "-" if best is None else best["sampler"],
                    "steps": "-" if best is None else int(best["steps"]),
                    "NFE": "-" if best is None else f"{best['nfe']:g}",
                    "FID": "-" if best is None else f"{best['mean']:.2f} ± {best['std']:.2f}",
                    "seeds": "-" if best is None else int(best["n_seeds"]),
                    "Euler's best": "-"
                    if euler is None
                    else f"{euler['mean']:.2f} ± {euler['std']:.2f} ({int(euler['steps'])} steps)",
                }
            )
    frame = pd.DataFrame(out)
    order = {v: i for i, v in enumerate(order_variants(frame["variant"]))}
    return frame.sort_values(
        ["backbone", "NFE budget", "variant"], key=lambda s: s.map(order) if s.name == "variant" else s, kind="stable"
    ).reset_index(drop=True)


def _lowest_fid(curve: pd.DataFrame) -> pd.Series | None:
    """The row of ``curve`` (``mean_nfe_curve`` rows) with the lowest mean FID; None if empty."""
    return None if curve.empty else curve.loc[curve["mean"].idxmin()]
