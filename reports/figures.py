"""The report's figures. Every ``plot_*`` function draws one figure, saves it as PNG and PDF
under ``out_dir`` (via ``save``) and returns the tidy DataFrame it plotted, so tests (and users)
can check the data behind a figure without looking at pixels.

Matplotlib is used through ``matplotlib.figure.Figure`` (no pyplot, no global backend state);
PDFs are written without a creation date so that rebuilding gives identical files.

Why not seaborn here: every figure plots means over seeds that the report computes anyway (for
the figure CSVs and the speed-ups), and the FLOPs and wall-clock axes take the mean over seeds of
x at each checkpoint, which ``seaborn.lineplot`` cannot do (it aggregates rows with identical x
only); one style per variant across figures comes from ``styles``. The codebook study's figures
against K, where every seed shares x, use seaborn (``reports.codebook_figures``, imported only
there: it pulls in scipy, a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure

from benchmarks.storage.atomic import save_with
from reports.curves import CURVE_KEY, X_COLUMNS, image_array, mean_curve, mean_nfe_curve, order_variants

FORMATS = ("png", "pdf")
DPI = 150
BAND_NOTE = "mean ± 1 s.d. over seeds"


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.png`` (``DPI``) and ``<name>.pdf``; returns their paths. (The figures use the
    constrained layout, so no ``bbox_inches="tight"``: that would draw everything twice.)"""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        save_with(lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata), path)  # noqa: B023 (called at once)
        paths.append(path)
    return paths


LINESTYLES = ("-", "--", ":", "-.")


def styles(variants) -> dict[str, dict]:
    """A fixed style per variant, shared by every figure: the colour follows the method (tab10, in
    ``order_variants`` order), the line style tells variants of one method apart (e.g. z-loss on/off)."""
    colours = colormaps["tab10"].colors
    ordered = order_variants(variants)
    methods = list(dict.fromkeys(v.split(" (")[0] for v in ordered))
    seen: dict[str, int] = {}
    out = {}
    for v in ordered:
        method = v.split(" (")[0]
        k = seen[method] = seen.get(method, -1) + 1
        out[v] = {"color": colours[methods.index(method) % len(colours)], "linestyle": LINESTYLES[k % len(LINESTYLES)]}
    return out


def _grid(n_rows: int, n_cols: int, width: float = 5.2, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    return fig, axes


def _backbone_panels(curve: pd.DataFrame, width: float = 5.2) -> tuple[Figure, list, dict[str, dict]]:
    """One panel per backbone of ``curve`` (rows with ``backbone`` and ``variant``): the figure,
    (axes, backbone, that backbone's rows) per panel, and each variant's line style."""
    backbones = sorted(curve["backbone"].unique())
    fig, axes = _grid(1, len(backbones), width=width)
    panels = [(ax, b, curve[curve["backbone"] == b]) for ax, b in zip(axes[0], backbones)]
    return fig, panels, styles(curve["variant"])


def _band(ax, x, mean, std, style: dict, label) -> None:
    ax.plot(x, mean, marker="o", markersize=3, label=label, **style)
    if np.any(np.asarray(std) > 0):
        ax.fill_between(x, np.asarray(mean) - std, np.asarray(mean) + std, color=style["color"], alpha=0.2, linewidth=0)


def _floor_lines(ax, floors: pd.DataFrame, backbone: str) -> None:
    """Horizontal lines at the tokenizer's reconstruction FID (one per distinct floor)."""
    if floors.empty:
        return
    here = floors[floors["backbones"].str.split(", ").apply(lambda bs: backbone in bs)]
    styles = ["--", ":", "-."]
    for k, (_, floor) in enumerate(here.iterrows()):
        if pd.isna(floor["fid"]):
            continue
        label = "tokenizer reconstruction FID (floor)"
        if len(floors) > 1:
            label += f", run {floor['runs']}"
        ax.axhline(float(floor["fid"]), color="black", linestyle=styles[k % len(styles)], linewidth=1, label=label)


def _legend(ax, fontsize: float = 7) -> None:
    """A few entries go inside the axes; more go outside on the right (the figure widens to make
    room), so that no curve is hidden behind the legend."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) <= 4:
        ax.legend(fontsize=fontsize, handlelength=3)
        return
    ax.legend(fontsize=fontsize, handlelength=3, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig = ax.get_figure()
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 0.5 + 0.07 * fontsize / 7 * max(map(len, labels)), height)


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels (no mathtext: faster, and readable as FID values);
    minor ticks labelled at 2, 3 and 5 times a power of ten only."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))

    def minor(value, _):
        mantissa = round(value / 10 ** np.floor(np.log10(value))) if value > 0 else 0
        return f"{value:g}" if mantissa in (2, 3, 5) else ""

    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(minor))


def _cell_text(row: pd.Series) -> str:
    return f"τ={row['temperature']:g}, {int(row['steps'])} steps" + (
        f", CFG {row['cfg_scale']:g}" if float(row["cfg_scale"]) != 1.0 else ""
    )


def plot_convergence(conv: pd.DataFrame, floors: pd.DataFrame, x: str, out_dir: Path, name: str) -> pd.DataFrame:
    """FID of the cheap cell against ``x`` (``step``, ``train_flops`` or ``train_wall_s``; x is the
    mean over seeds at each checkpoint), one curve per variant, one panel per backbone, the
    tokenizer floor as a horizontal line. Returns the plotted means (``mean_curve``) with ``cell``."""
    curve = mean_curve(conv, x=x)
    cells = conv.groupby(["backbone", "variant"]).first().apply(_cell_text, axis=1).rename("cell").reset_index()
    curve = curve.merge(cells, on=["backbone", "variant"], how="left")
    fig, panels, look = _backbone_panels(curve)
    several = curve["n_seeds"].max() > 1
    for ax, backbone, here in panels:
        for variant in order_variants(here["variant"]):
            c = here[here["variant"] == variant]
            seeds = int(c["n_seeds"].max())
            label = f"{variant} ({c['cell'].iloc[0]}; {seeds} seed{'s' if seeds > 1 else ''})"
            _band(ax, c[x].to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy(), look[variant], label)
        _floor_lines(ax, floors, backbone)
        _log_y(ax)
        ax.set_xlabel(X_COLUMNS[x])
        ax.set_ylabel("FID (log scale)")
        ax.set_title(f"{backbone}: FID vs {X_COLUMNS[x].split(' (')[0]}" + (f"\n({BAND_NOTE})" if several else ""))
        ax.grid(True, alpha=0.3)
        _legend(ax)
    save(fig, out_dir, name)
    return curve


def plot_steps(rows: pd.DataFrame, floors: pd.DataFrame, out_dir: Path, name: str = "fid_vs_steps") -> pd.DataFrame:
    """FID against sampler steps (``reports.curves.steps_curves`` rows), one curve per variant (mean
    over seeds, band ± s.d.), one panel per backbone, log-log with a tick at each step count. Returns
    the plotted means: backbone, variant, step (the checkpoint), temperature, steps, mean, std, n_seeds."""
    curve = (
        rows.groupby(CURVE_KEY + ["step", "temperature", "steps"], sort=True)
        .agg(mean=("fid", "mean"), std=("fid", "std"), n_seeds=("seed", "nunique"))
        .reset_index()
    )
    curve["std"] = curve["std"].fillna(0.0)
    fig, panels, look = _backbone_panels(curve)
    for ax, backbone, here in panels:
        for variant in order_variants(here["variant"]):
            c = here[here["variant"] == variant]
            seeds = int(c["n_seeds"].max())
            label = (
                f"{variant} (τ={c['temperature'].iloc[0]:g}, step {int(c['step'].iloc[0])}; "
                f"{seeds} seed{'s' if seeds > 1 else ''})"
            )
            _band(ax, c["steps"].to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy(), look[variant], label)
        _floor_lines(ax, floors, backbone)
        ax.set_xscale("log")
        ticks = sorted(here["steps"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        _log_y(ax)
        ax.set_xlabel("Euler sampler steps (log scale)")
        ax.set_ylabel("FID (log scale)")
        ax.set_title(
            f"{backbone}: FID vs sampler steps at the last checkpoint"
            + (f"\n({BAND_NOTE})" if here["n_seeds"].max() > 1 else "")
        )
        ax.grid(True, alpha=0.3)
        _legend(ax)
    save(fig, out_dir, name)
    return curve


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
"""A marker per sampler in ``plot_nfe`` (the colour is the method's)."""


def plot_nfe(rows: pd.DataFrame, floors: pd.DataFrame, out_dir: Path, name: str = "fid_vs_nfe") -> pd.DataFrame:
    """FID against network evaluations per sample (``reports.curves.nfe_curves`` rows): one line
    per (variant, sampler), mean over seeds with a band ± 1 s.d., the colour by method and the
    marker and line style by sampler; log-log, one panel per backbone. Returns the plotted means
    (``reports.curves.mean_nfe_curve``)."""
    curve = mean_nfe_curve(rows)
    fig, panels, look = _backbone_panels(curve, width=6.4)
    samplers = sorted(curve["sampler"].unique())
    for ax, backbone, here in panels:
        for variant in order_variants(here["variant"]):
            for sampler in sorted(here.loc[here["variant"] == variant, "sampler"].unique()):
                c = here[(here["variant"] == variant) & (here["sampler"] == sampler)]
                k = samplers.index(sampler)
                style = {"color": look[variant]["color"], "linestyle": LINESTYLES[k % len(LINESTYLES)]}
                x, mean, std = c["nfe"].to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy()
                ax.plot(x, mean, marker=MARKERS[k % len(MARKERS)], markersize=4, label=f"{variant}, {sampler}", **style)
                if np.any(std > 0):
                    ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.12, linewidth=0)
        _floor_lines(ax, floors, backbone)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        _log_y(ax)
        ax.set_xlabel("network evaluations per sample, NFE (log scale)")
        ax.set_ylabel("FID (log scale)")
        seeds = int(here["n_seeds"].max())
        ax.set_title(
            f"{backbone}: FID vs NFE per sampler at the last checkpoint" + (f"\n({BAND_NOTE})" if seeds > 1 else "")
        )
        ax.grid(True, alpha=0.3)
        _legend(ax)
    save(fig, out_dir, name)
    return curve


def plot_class_accuracy(
    conv: pd.DataFrame, floors: pd.DataFrame, out_dir: Path, name: str = "class_accuracy_vs_iterations"
) -> pd.DataFrame:
    """Class accuracy of the cheap cell's samples against training iterations (mean over seeds,
    band ± 1 s.d.), one curve per variant, one panel per backbone; the tokenizer reconstructions'
    class accuracy (the ceiling) as a dashed line. Returns the plotted means (``mean_curve``)."""
    curve = mean_curve(conv.dropna(subset=["class_accuracy"]), value="class_accuracy")
    fig, panels, look = _backbone_panels(curve)
    for ax, backbone, here in panels:
        for variant in order_variants(here["variant"]):
            c = here[here["variant"] == variant]
            _band(ax, c["step"].to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy(), look[variant], variant)
        ceilings = (
            floors[floors["backbones"].str.split(", ").apply(lambda bs, b=backbone: b in bs)]
            if not floors.empty
            else floors
        )
        for _, floor in ceilings.iterrows():
            if pd.notna(floor.get("class_accuracy")):
                ax.axhline(
                    float(floor["class_accuracy"]),
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label="tokenizer reconstructions (ceiling)",
                )
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(X_COLUMNS["step"])
        ax.set_ylabel("class accuracy of samples")
        several = here["n_seeds"].max() > 1
        ax.set_title(f"{backbone}: class accuracy vs training iterations" + (f"\n({BAND_NOTE})" if several else ""))
        ax.grid(True, alpha=0.3)
        _legend(ax)
    save(fig, out_dir, name)
    return curve


def plot_temperature(
    sweep_rows: pd.DataFrame,
    floors: pd.DataFrame,
    meanings: dict[str, str],
    out_dir: Path,
    name: str = "fid_vs_temperature",
) -> pd.DataFrame:
    """FID against sampling temperature at the sweep checkpoint, one curve per variant (its
    temperature definition in the legend), one panel per backbone. Returns the plotted means."""
    from reports.curves import sweep_curve

    curve = sweep_curve(sweep_rows)
    fig, panels, look = _backbone_panels(curve, width=6.5)
    for ax, backbone, here in panels:
        steps_at = sorted(here["sweep_step"].unique())
        for variant in order_variants(here["variant"]):
            c = here[here["variant"] == variant]
            method = variant.split(" (")[0]
            label = f"{variant}: {meanings.get(method, 'temperature')}"
            if len(steps_at) > 1:
                label += f" (step {int(c['sweep_step'].iloc[0])})"
            _band(ax, c["temperature"].to_numpy(), c["mean"].to_numpy(), c["std"].to_numpy(), look[variant], label)
            best = c.loc[c["mean"].idxmin()]
            ax.plot([best["temperature"]], [best["mean"]], marker="*", markersize=11, color=look[variant]["color"])
        _floor_lines(ax, floors, backbone)
        where = f"step {steps_at[0]}" if len(steps_at) == 1 else "each variant's last sweep"
        ax.set_title(
            f"{backbone}: FID vs sampling temperature at {where}, {int(here['steps'].iloc[0])} steps"
            + (f"\n({BAND_NOTE}; ★ = best)" if here["n_seeds"].max() > 1 else "\n(★ = best)")
        )
        ax.set_xlabel("temperature τ (meaning per method in the legend)")
        ax.set_ylabel("FID")
        ax.grid(True, alpha=0.3)
        _legend(ax)
    save(fig, out_dir, name)
    return curve


def plot_samples(grids: pd.DataFrame, title: str, out_dir: Path, name: str) -> pd.DataFrame:
    """The PNG sample grids of one variant/seed/checkpoint, temperature low to high: side by side,
    or stacked top to bottom when that row would be over 8 times as wide as high. A grid with a
    ``layout`` is cut to its full rows and, where every column holds one class, its columns are
    labelled by class. ``grids``: columns temperature, path, layout (a ``GridLayout`` or None; see
    ``reports.curves.sample_grids``). Returns it sorted by temperature."""
    grids = grids.sort_values("temperature").reset_index(drop=True)
    images = [
        image_array(path) if layout is None else image_array(path)[: layout.full_height]
        for path, layout in zip(grids["path"], grids["layout"])
    ]
    labels = [None if layout is None else layout.column_labels() for layout in grids["layout"]]
    height, width = images[0].shape[:2]
    stacked = len(images) * width > 8 * height  # side by side unless the row of panels gets very wide
    extra = 0.45 if any(labels) else 0.0
    if stacked:
        fig, axes = _grid(len(images), 1, width=7.0, height=7.0 * height / width + 0.35 + extra)
    else:
        fig, axes = _grid(1, len(images), width=3.2, height=3.2 * height / width + 0.6 + extra)
    for ax, image, tau, layout, columns in zip(axes.ravel(), images, grids["temperature"], grids["layout"], labels):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"τ = {tau:g}", fontsize=9)
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        if columns:
            ax.set_xticks(layout.column_centres(), columns, fontsize=7)
            ax.tick_params(axis="x", length=0, pad=1)
            ax.set_xlabel("class", fontsize=7, labelpad=1)
        else:
            ax.set_xticks([])
    fig.suptitle(title, fontsize=9)
    save(fig, out_dir, name)
    return grids


TRAIN_PANELS = {"loss": "training loss", "logsumexp": "mean logsumexp of the logits"}


def plot_train_logs(logs: pd.DataFrame, out_dir: Path, name: str = "train_loss") -> pd.DataFrame:
    """Training loss (and, for categorical methods, logsumexp, what z-loss keeps near 0) against
    iterations from train_log.csv, per variant (mean over seeds, band ± s.d.), a row per backbone.
    Returns the tidy means: backbone, variant, quantity, step, mean, std, n_seeds."""
    quantities = [q for q in TRAIN_PANELS if q in logs.columns and logs[q].notna().any()]
    tidy = (
        logs.melt(id_vars=["backbone", "variant", "seed", "step"], value_vars=quantities, var_name="quantity")
        .dropna(subset=["value"])
        .groupby(["backbone", "variant", "quantity", "step"], sort=True)
        .agg(mean=("value", "mean"), std=("value", "std"), n_seeds=("seed", "nunique"))
        .reset_index()
    )
    tidy["std"] = tidy["std"].fillna(0.0)
    backbones = sorted(tidy["backbone"].unique())
    look = styles(tidy["variant"])
    fig, axes = _grid(len(backbones), len(quantities))
    for r, backbone in enumerate(backbones):
        for c, quantity in enumerate(quantities):
            ax = axes[r, c]
            here = tidy[(tidy["backbone"] == backbone) & (tidy["quantity"] == quantity)]
            for variant in order_variants(here["variant"]):
                v = here[here["variant"] == variant]
                _band(ax, v["step"].to_numpy(), v["mean"].to_numpy(), v["std"].to_numpy(), look[variant], variant)
            if quantity == "loss" and (here["mean"] > 0).all() and not here.empty:
                _log_y(ax)
            ax.set_xlabel("training iterations")
            ax.set_ylabel(TRAIN_PANELS[quantity] + (" (log scale)" if ax.get_yscale() == "log" else ""))
            several = not here.empty and here["n_seeds"].max() > 1
            ax.set_title(f"{backbone}: {TRAIN_PANELS[quantity]}" + (f" ({BAND_NOTE})" if several else ""), fontsize=9)
            ax.grid(True, alpha=0.3)
            if not here.empty:
                _legend(ax)
    save(fig, out_dir, name)
    return tidy


ENTROPY_MEANING = {
    "purr": "posterior entropy H(π) over codes",
    "dfm": "entropy of the jump distribution",
    "dfm-uniform": "entropy of the jump distribution",
}


def plot_entropy(
    traces: pd.DataFrame, codebook_sizes: dict[tuple[str, str], int], out_dir: Path, name: str = "entropy_vs_t"
) -> pd.DataFrame:
    """Mean per-position entropy (nats) along the sampler's t, one curve per temperature (dark = low,
    bright = high), a panel per (backbone, variant); ``log K`` (uniform over the codebook) dashed.
    ``traces``: ``reports.curves.entropy_traces``. Returns it."""
    panels = [
        (b, v)
        for b in sorted(traces["backbone"].unique())
        for v in order_variants(traces.loc[traces["backbone"] == b, "variant"])
    ]
    fig, axes = _grid(1, len(panels), width=4.6)
    cmap = colormaps["plasma"]
    for ax, (backbone, variant) in zip(axes[0], panels):
        here = traces[(traces["backbone"] == backbone) & (traces["variant"] == variant)]
        temps = sorted(here["temperature"].unique())
        for k, tau in enumerate(temps):
            curve = here[here["temperature"] == tau].sort_values("t")
            shade = 0.85 * k / max(len(temps) - 1, 1)  # plasma's last 15% is too pale on white
            ax.plot(curve["t"], curve["entropy"], color=cmap(shade), marker=".", label=f"τ = {tau:g}")
        size = codebook_sizes.get((backbone, variant))
        if size:
            ax.axhline(np.log(size), color="gray", linestyle="--", linewidth=1, label=f"log K (K = {size})")
        method = variant.split(" (")[0]
        first = here.iloc[0]
        ax.set_title(
            f"{backbone}: {variant}, step {int(first['step'])}, {int(first['steps'])} steps\n"
            f"{ENTROPY_MEANING.get(method, 'entropy')}",
            fontsize=9,
        )
        ax.set_xlabel("t (0 = noise, 1 = data)")
        ax.set_ylabel("mean entropy per position (nats)")
        ax.set_xlim(0, 1)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    save(fig, out_dir, name)
    return traces
