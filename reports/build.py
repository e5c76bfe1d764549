"""``build_report``: read run folders, draw every figure, write ``report.md``.

Output layout (``out``, default ``<first run dir>/report``)::

    report.md
    figures/<name>.png, <name>.pdf   each figure
    figures/<name>.csv               the tidy data it plots
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from benchmarks.storage.atomic import save_with
from benchmarks.storage.run_dir import REPORT_FILE, TRAIN_LOG, RunDir
from reports import figures as F
from reports.curves import (
    CURVE_KEY,
    best_temperature_curves,
    convergence,
    entropy_traces,
    nfe_curves,
    order_variants,
    sample_grids,
    steps_curves,
    sweeps,
    temperature_curves,
)
from reports.load import Results, RunFolderError, load_runs
from reports.markdown import FigureEntry, render
from reports.tables import (
    best_temperature_speedup_table,
    best_within_nfe_table,
    floor_table,
    other_cells_table,
    results_table,
    speedup_table,
    variants_table,
)


def temperature_meanings(methods: list[str]) -> dict[str, str]:
    """Each method's ``temperature_meaning`` from the method registry (plugins must have been
    imported, e.g. ``python -m reports --plugins examples.lognormal_cfm``). The registry imports
    torch; without torch every method gets a note saying so instead."""
    try:
        from methods import get_method
    except ImportError:
        return dict.fromkeys(methods, "(unknown here: the method registry needs torch)")
    out = {}
    for name in methods:
        try:
            out[name] = get_method(name).temperature_meaning
        except KeyError:
            out[name] = "(unknown: method not registered; pass its plugin module with --plugins)"
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _setup_table(results: Results) -> pd.DataFrame:
    rows = []
    for run in results.runs:
        cfg, train = run.config, run.config.get("train") or {}
        rows.append(
            {
                "run": run.name,
                "config": cfg.get("name", "-"),
                "backbone": run.backbone,
                "tokenizer": (cfg.get("tokenizer") or {}).get("kind", "-"),
                "iterations": train.get("iterations", "-"),
                "batch": train.get("batch_size", "-"),
                "methods": ", ".join(run.methods()),
                "seeds": ", ".join(map(str, run.manifest.get("seeds") or [])),
                "git commit": run.manifest.get("git_commit", "-"),
            }
        )
    return pd.DataFrame(rows)


def _codebook_sizes(results: Results) -> dict[tuple[str, str], int]:
    """(backbone, variant) -> codebook size K, from the manifests' latent-space info."""
    sizes = {}
    for (source, _), variant in sorted(results.labels.items()):
        run = results.runs[source]
        size = (run.manifest.get("latents") or {}).get("codebook_size")
        if size:
            sizes.setdefault((run.backbone, variant), int(size))
    return sizes


def draw_figures(
    results: Results,
    fig_dir: Path,
    conv: pd.DataFrame,
    sweep_rows: pd.DataFrame,
    step: int | None,
    meanings: dict[str, str],
    by_nfe: pd.DataFrame,
) -> list[FigureEntry]:
    """Draw every figure the data supports into ``fig_dir``; returns their entries for report.md.
    ``conv``: ``convergence(results)``; ``sweep_rows``: ``sweeps(results, step)``;
    ``by_nfe``: ``nfe_curves(results, conv)``."""
    entries = []

    def keep(name: str, frame: pd.DataFrame, title: str, caption: str) -> None:
        save_with(lambda tmp: frame.to_csv(tmp, index=False), fig_dir / f"{name}.csv")
        entries.append(FigureEntry(name, title, caption))

    if not conv.empty:
        for x, name, what in (
            ("step", "fid_vs_iterations", "training iterations"),
            ("train_flops", "fid_vs_flops", "training FLOPs"),
            ("train_wall_s", "fid_vs_wall_clock", "training wall-clock seconds"),
        ):
            if conv[x].isna().all():
                continue
            keep(
                name,
                F.plot_convergence(conv, results.floors, x, fig_dir, name),
                f"FID vs {what}",
                f"Cheap-cell FID against {what} (mean over seeds at each checkpoint, band ± 1 s.d. when there "
                "are several seeds); dashed: the tokenizer's reconstruction FID.",
            )
        by_steps = steps_curves(results, conv)
        if not by_steps.empty:
            keep(
                "fid_vs_steps",
                F.plot_steps(by_steps, results.floors, fig_dir),
                "FID vs sampler steps",
                "FID against the number of Euler sampler steps at each method's last checkpoint, with its "
                "default-temperature cell (mean over seeds, band ± 1 s.d. when there are several seeds); "
                "dashed: the tokenizer's reconstruction FID.",
            )
        if not by_nfe.empty:
            keep(
                "fid_vs_nfe",
                F.plot_nfe(by_nfe, results.floors, fig_dir),
                "FID vs network evaluations per sampler",
                "FID against the network evaluations per sample (NFE, guidance included) of each sampler at "
                "each method's last checkpoint, with its default-temperature cell (mean over seeds, band ± 1 "
                "s.d.); dashed: the tokenizer's reconstruction FID.",
            )
    if "class_accuracy" in conv and conv["class_accuracy"].notna().any():
        keep(
            "class_accuracy_vs_iterations",
            F.plot_class_accuracy(conv, results.floors, fig_dir),
            "Class accuracy vs training iterations",
            "Fraction of the cheap cell's samples that the evaluation classifier assigns to the label they were "
            "generated for (mean over seeds, band ± 1 s.d.); dashed: the tokenizer reconstructions' (the ceiling).",
        )
    if not sweep_rows.empty:
        keep(
            "fid_vs_temperature",
            F.plot_temperature(sweep_rows, results.floors, meanings, fig_dir),
            "FID vs sampling temperature",
            "FID of the temperature sweep per method (★ = best); the legend says "
            "what temperature means for each method.",
        )
        several = sweep_rows["backbone"].nunique() > 1
        for backbone in sorted(sweep_rows["backbone"].unique()):
            here = sweep_rows[sweep_rows["backbone"] == backbone]
            for variant in order_variants(here["variant"]):
                first = here[here["variant"] == variant].iloc[0]
                at, steps = int(first["sweep_step"]), int(first["steps"])
                grids = sample_grids(
                    results,
                    backbone,
                    variant,
                    at,
                    steps,
                    float(first["cfg_scale"]),
                    int(first["n_samples"]) if "n_samples" in first else None,
                )
                if grids.empty:
                    continue
                seed = int(grids["seed"].iloc[0])
                name = "samples_" + slug(variant) + (f"_{slug(backbone)}" if several else "")
                meaning = meanings.get(variant.split(" (")[0], "temperature")
                title = (
                    f"{backbone} {variant}: samples of seed {seed} at step {at}, {steps} sampler steps\nτ: {meaning}"
                )
                plotted = F.plot_samples(grids, title, fig_dir, name)
                files = [
                    f"{results.runs[int(s)].name}/{Path(p).relative_to(results.runs[int(s)].path).as_posix()}"
                    for s, p in zip(plotted["source"], plotted["path"])
                ]
                keep(
                    name,
                    plotted[["seed", "temperature"]].assign(file=files),
                    f"Samples across temperature: {variant}" + (f" ({backbone})" if several else ""),
                    f"Sample grids of seed {seed} at step {at}, temperature increasing from the first panel to the "
                    "last; full rows only, one column per class where the grid has one.",
                )
    if not results.train_logs.empty:
        keep(
            "train_loss",
            F.plot_train_logs(results.train_logs, fig_dir),
            "Training loss and logsumexp",
            f"Per-interval means from {TRAIN_LOG} (mean over seeds); logsumexp is what the z-loss keeps near 0. "
            "Variants that differ in a setting (e.g. z_loss) are labelled by it.",
        )
    traces = entropy_traces(results, step)
    if not traces.empty:
        keep(
            "entropy_vs_t",
            F.plot_entropy(traces, _codebook_sizes(results), fig_dir),
            "Entropy along the sampler",
            "Mean per-position entropy along t, one curve per temperature (Purrception: entropy of the code "
            "posterior; DFM: of the jump distribution), at the last checkpoint with traces.",
        )
    return entries


def report_text(
    results: Results,
    conv: pd.DataFrame,
    sweep_rows: pd.DataFrame,
    meanings: dict[str, str],
    figures: list[FigureEntry],
    by_nfe: pd.DataFrame | None = None,
) -> str:
    """The content of report.md (deterministic given the inputs); ``by_nfe``: ``nfe_curves(results,
    conv)`` when the caller has it."""
    methods = sorted(set(results.variants["method"]))
    meaning_rows = pd.DataFrame({"method": methods, "temperature τ means": [meanings.get(m, "-") for m in methods]})
    curves = temperature_curves(results, conv)
    tuned = not curves.empty and (curves.groupby(CURVE_KEY)["temperature"].nunique() > 1).any()
    best = (
        best_temperature_speedup_table(best_temperature_curves(curves), results.variants, sweep_rows) if tuned else None
    )
    by_nfe = nfe_curves(results, conv) if by_nfe is None else by_nfe
    return render(
        runs=[r.name for r in results.runs],
        best_within_nfe=None if by_nfe.empty else best_within_nfe_table(by_nfe),
        setup=_setup_table(results),
        results=results_table(results, conv, sweep_rows),
        other_cells=other_cells_table(results, conv, sweep_rows),
        floors=floor_table(results),
        speedups=speedup_table(conv, results.variants),
        best_speedups=best,
        variants=variants_table(results),
        meanings=meaning_rows,
        figures=figures,
        notes=results.notes,
        diverged=results.diverged,
    )


def check_out(out: Path) -> None:
    """RunFolderError naming the report folder if it cannot be written, before any figure is drawn."""
    from benchmarks.storage.writable import unwritable_reason

    reason = unwritable_reason(out)
    if reason is None and out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        reason = f"folder {out} is not writable"
    if reason is not None:
        raise RunFolderError(f"the report folder {out} cannot be written ({reason}): choose a writable --out")


def build_report(run_dirs: list[Path], out: Path | None = None, *, step: int | None = None) -> Path:
    """Rebuild the report of one or several run folders (merged; see ``reports.load``) into
    ``out`` (default ``<first run dir>/report``) and return ``out``. ``step``: the checkpoint of
    the temperature figure, sample grids and entropy traces (default: each variant's last one with
    a temperature sweep / with traces). A single path is accepted in place of the list. Raises
    RunFolderError for a missing or malformed run folder, ValueError if ``step`` has no sweep."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(d) for d in run_dirs]
    results = load_runs(run_dirs)
    conv, sweep_rows = convergence(results), sweeps(results, step)
    out = Path(out) if out is not None else RunDir(run_dirs[0]).report
    check_out(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.iterdir():  # figures of an earlier build that this data may not produce
        if stale.suffix in (".png", ".pdf", ".csv") and stale.is_file():
            stale.unlink()
    meanings = temperature_meanings(sorted(set(results.variants["method"])))
    by_nfe = nfe_curves(results, conv)
    entries = draw_figures(results, fig_dir, conv, sweep_rows, step, meanings, by_nfe)
    text = report_text(results, conv, sweep_rows, meanings, entries, by_nfe)
    save_with(lambda tmp: tmp.write_text(text), out / REPORT_FILE)
    return out
