"""The codebook-size study's figures (``reports.codebook``). Each ``plot_*`` draws one figure,
saves PNG and PDF (``reports.figures.save``) and returns the tidy data it plotted.

Seaborn draws the figures whose x is the codebook size K: every seed of a method has the same K,
so its aggregation (mean and s.d. over the seeds at each K) is exactly the one wanted, and the
seeds are drawn as points beside it. The FID-against-FLOPs and -CPU-seconds panels keep
matplotlib: their x is the mean over seeds at each checkpoint, which seaborn does not aggregate.
Seaborn (with scipy, a few seconds) is imported only here, when a study report is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from benchmarks.storage.atomic import save_with
from reports import figures as F
from reports.curves import X_COLUMNS, mean_curve, order_variants
from reports.markdown import FigureEntry

STUDY_X = {**X_COLUMNS, "train_cpu_s": "training CPU time (s)"}


def _k_axis(ax, sizes) -> None:
    """Log-2 x axis with a tick at each codebook size."""
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for k in sizes})
    ax.set_xticks(ticks, [f"{k:,}" for k in ticks])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("codebook size K (log scale)")


def _palette(methods) -> dict[str, tuple]:
    return {m: style["color"] for m, style in F.styles(methods).items()}


def plot_final(finals: pd.DataFrame, value: str, floor: str, ylabel: str, out_dir: Path, name: str) -> pd.DataFrame:
    """``value`` at the last checkpoint against K, one line per method (seaborn: mean ± 1 s.d. over
    seeds; the seeds as points), the tokenizer's ``floor`` per K dashed."""
    import seaborn as sns

    methods = order_variants(finals["method"])
    palette = _palette(methods)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(
        data=finals, x="K", y=value, hue="method", hue_order=methods, palette=palette, errorbar="sd",
        marker="o", err_style="bars", ax=ax,
    )  # fmt: skip
    sns.scatterplot(
        data=finals, x="K", y=value, hue="method", hue_order=methods, palette=palette, alpha=0.4, s=18,
        legend=False, ax=ax,
    )  # fmt: skip
    floors = finals.drop_duplicates("K").sort_values("K")
    ax.plot(floors["K"], floors[floor], color="black", linestyle="--", linewidth=1, label="tokenizer floor")
    _k_axis(ax, finals["K"])
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} at the last checkpoint against K\n(mean ± 1 s.d. over seeds; points: seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    F.save(fig, out_dir, name)
    return finals


def plot_speedups(rows: pd.DataFrame, out_dir: Path, name: str = "speedup_vs_codebook_size") -> pd.DataFrame:
    """Purrception's speed-up against K, one panel per baseline, one line per axis (iterations,
    FLOPs, wall and CPU seconds) with its 95% bootstrap interval as error bars; 1 (no advantage)
    dashed. Where Purrception never reaches the baseline's final FID, the point is 1 / (the
    baseline's speed-up to Purrception's final FID), its interval inverted likewise, drawn hollow;
    other bounds (``>=``, ``not reached``) are drawn at their value."""
    baselines = order_variants(rows["baseline"])
    fig = Figure(figsize=(5.2 * len(baselines), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(baselines), squeeze=False)[0])
    axes_order = list(dict.fromkeys(rows["axis"]))
    markers = dict(zip(axes_order, "osD^v"))
    for ax, base in zip(axes, baselines):
        here = rows[rows["baseline"] == base]
        for i, axis in enumerate(axes_order):
            c = here[here["axis"] == axis].sort_values("K")
            k = c["K"].to_numpy(float) * 2 ** (0.06 * (i - 1.5))  # side by side at each K
            behind = c["reverse_speedup"].notna().to_numpy()
            y = np.where(behind, 1.0 / c["reverse_speedup"], c["speedup"])
            low = np.where(behind, 1.0 / c["reverse_ci_high"], c["ci_low"])
            high = np.where(behind, 1.0 / c["reverse_ci_low"], c["ci_high"])
            err = np.abs(np.vstack([y - low, high - y]))
            line = ax.errorbar(k, y, yerr=np.where(np.isnan(err), 0.0, err), marker=markers[axis], capsize=3,
                               label=f"per {axis}")  # fmt: skip
            hollow = {"linestyle": "", "marker": markers[axis], "markerfacecolor": "white", "zorder": 4}
            ax.plot(k[behind], y[behind], color=line[0].get_color(), **hollow)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="no advantage")
        _k_axis(ax, here["K"])
        F._log_y(ax)
        ax.set_ylabel("speed-up (log scale)")
        ax.set_title(f"purr over {base}: speed-up to {base}'s final FID\n(95% bootstrap intervals over seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    F.save(fig, out_dir, name)
    return rows


def plot_costs(ratios: pd.DataFrame, out_dir: Path, name: str = "step_cost_vs_codebook_size") -> pd.DataFrame:
    """A training step's cost relative to cfm's against K (seaborn: mean ± 1 s.d. over seeds of
    the per-seed ratios), colour by quantity (FLOPs, CPU s, wall s, peak memory), line style by
    method; 1 dashed."""
    import seaborn as sns

    methods = order_variants(ratios["method"])
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    sns.lineplot(
        data=ratios, x="K", y="ratio", hue="quantity", style="method", style_order=methods, errorbar="sd",
        dashes=dict(zip(methods, ["", (4, 2), (1, 1)])), markers=dict(zip(methods, "osD")), err_style="bars",
        ax=ax,
    )  # fmt: skip
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    _k_axis(ax, ratios["K"])
    F._log_y(ax)
    ax.set_ylabel("ratio to cfm's step (log scale)")
    ax.set_title("Cost of a training step relative to cfm\n(mean ± 1 s.d. over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    F.save(fig, out_dir, name)
    return ratios


def plot_curves_by_k(study, x: str, out_dir: Path, name: str) -> pd.DataFrame:
    """FID of the cheap cell against ``x`` (training FLOPs or CPU seconds), one panel per K, one
    curve per method (mean over seeds, band ± 1 s.d.), the tokenizer floor dashed."""
    fig = Figure(figsize=(4.2 * len(study), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(study), squeeze=False)[0])
    frames = []
    for ax, run in zip(axes, study):
        curve = mean_curve(run.conv, x=x)
        look = F.styles(curve["variant"])
        for variant in order_variants(curve["variant"]):
            c = curve[curve["variant"] == variant]
            F._band(ax, c[x].to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy(), look[variant], variant)
        F._floor_lines(ax, run.results.floors, run.results.runs[0].backbone)
        F._log_y(ax)
        ax.set_xscale("log")
        ax.set_xlabel(STUDY_X[x] + ", log scale")
        ax.set_ylabel("FID (log scale)")
        ax.set_title(f"K = {run.K:,}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        frames.append(curve.assign(K=run.K))
    F.save(fig, out_dir, name)
    return pd.concat(frames, ignore_index=True)


def draw(study, finals: pd.DataFrame, speedups: pd.DataFrame, ratios: pd.DataFrame, fig_dir: Path) -> list[FigureEntry]:
    """Every figure the data supports; their entries for report.md (data CSV beside each)."""
    entries = []

    def keep(name: str, frame: pd.DataFrame, title: str, caption: str) -> None:
        save_with(lambda tmp: frame.to_csv(tmp, index=False), fig_dir / f"{name}.csv")
        entries.append(FigureEntry(name, title, caption))

    if not finals.empty:
        keep(
            "final_fid_vs_codebook_size",
            plot_final(finals, "fid", "floor_fid", "FID", fig_dir, "final_fid_vs_codebook_size"),
            "Final FID against K",
            "FID of each method's last checkpoint per codebook size (mean ± 1 s.d. over seeds; points: the "
            "seeds); dashed: the tokenizer's reconstruction FID.",
        )
        if finals["class_accuracy"].notna().any():
            keep(
                "class_accuracy_vs_codebook_size",
                plot_final(
                    finals,
                    "class_accuracy",
                    "floor_class_accuracy",
                    "class accuracy",
                    fig_dir,
                    "class_accuracy_vs_codebook_size",
                ),  # fmt: skip
                "Final class accuracy against K",
                "Fraction of samples the evaluation classifier assigns to their label (mean ± 1 s.d.; points: "
                "seeds); dashed: the reconstructions' (the ceiling).",
            )
    if not speedups.empty:
        keep(
            "speedup_vs_codebook_size",
            plot_speedups(speedups, fig_dir),
            "Speed-ups against K",
            "Purrception's speed-up to each baseline's final FID per codebook size, per training iteration, "
            "FLOP, wall-clock second and CPU second, with 95% bootstrap intervals; dashed: no advantage. Hollow: "
            "Purrception never reaches the baseline's final FID; plotted is 1 / the baseline's speed-up to "
            "Purrception's final FID.",
        )
    if not ratios.empty:
        keep(
            "step_cost_vs_codebook_size",
            plot_costs(ratios, fig_dir),
            "Cost of a training step against K",
            "FLOPs, CPU and wall seconds, and peak live-tensor memory of a training step, each relative to "
            "cfm's with the same seed (mean ± 1 s.d. over seeds).",
        )
    for x, name, what in (
        ("train_flops", "fid_vs_flops_by_codebook_size", "training FLOPs"),
        ("train_cpu_s", "fid_vs_cpu_seconds_by_codebook_size", "training CPU seconds"),
    ):
        if all(run.conv[x].notna().all() for run in study):
            keep(
                name,
                plot_curves_by_k(study, x, fig_dir, name),
                f"FID against {what}, per K",
                f"Cheap-cell FID against {what}, one panel per codebook size (mean over seeds, band ± 1 s.d.); "
                "dashed: the tokenizer's reconstruction FID.",
            )
    return entries
