"""``python -m reports.codebook RUN_DIR [RUN_DIR ...] [--out DIR]``: the codebook-size study's report.

Each run folder holds one codebook size K (``python -m benchmarks.run --config codebook-scaling
--set tokenizer.vqvae.codebook_size=K``) with the same methods, seeds and recipe; K is read from
the manifest (``latents.codebook_size``). The report sets the runs side by side, against K:

- the tokenizer: codes used, dead codes, perplexity / K, reconstruction error and its floor;
- each method's final FID and class accuracy (the cheap cell at the last checkpoint);
- Purrception's speed-up over every baseline at the baseline's full budget, four ways: training
  iterations, FLOPs, wall-clock seconds and CPU seconds (``reports.speedup``, bootstrap over seeds);
  where Purrception never reaches the baseline's final FID, the baseline's speed-up to
  Purrception's final FID instead (how far behind it is);
- the cost of a training step against cfm's: FLOPs, CPU and wall seconds, peak live-tensor memory;
- what the measured speed-ups imply where the K-logit head's FLOP share is the paper's (DiT-XL/2
  at K = 16384).

CPU seconds: a job's manifest records its training CPU seconds (``train_cpu_s``, process time over
the same spans as ``train_wall_s``); a checkpoint's CPU seconds are its step times the job's CPU
seconds per step, so the CPU-seconds speed-up is the iteration speed-up rescaled by the jobs'
measured costs per step and holds even when runs shared the cores.

Output (default ``<parent of the first RUN_DIR>/report``): ``report.md`` and ``figures/<name>.png,
.pdf, .csv`` (the CSV is the tidy data the figure plots). Exit status 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.storage.atomic import save_with
from benchmarks.storage.run_dir import MANIFEST, REPORT_FILE
from reports.build import check_out
from reports.curves import convergence, order_variants, seed_matrix
from reports.load import MergeWarning, Results, RunFolderError, load_runs
from reports.markdown import SPEEDUP_METHOD, FigureEntry, table
from reports.speedup import (
    AT_LEAST,
    NOT_REACHED,
    Speedup,
    bootstrap_interval,
    format_interval,
    format_speedup,
    speedup,
)
from reports.tables import mean_sd

BASELINE = "cfm"
"""The method whose step cost the others' are divided by."""
PURR = "purr"
AXES = {
    "step": "iters",
    "train_flops": "FLOPs",
    "train_wall_s": "wall s",
    "train_cpu_s": "CPU s",
}
"""The x axes of the speed-ups: column -> label."""
PAPER_CONFIG = {"backbone": "XL/2", "grid": (32, 32), "num_classes": 1000, "codebook_size": 16384, "code_dim": 4}
"""The paper's ImageNet 256 setting whose head FLOP share the study is compared with: DiT-XL/2 on
LDM vq-f8's 32x32 grid of K = 16384 codes of d = 4, 1000 classes."""
MIB = 2**20


@dataclass(frozen=True)
class CodebookRun:
    """One codebook size's run: ``conv`` is its cheap-cell convergence rows (``reports.curves``)
    with a ``train_cpu_s`` column; ``jobs`` the manifest's job summaries (one row per method and
    seed: step, flops_per_step, train_wall_s, train_cpu_s, peak_step_bytes)."""

    K: int
    name: str
    results: Results
    conv: pd.DataFrame
    jobs: pd.DataFrame
    latents: dict


def load_study(run_dirs: list[Path]) -> list[CodebookRun]:
    """The run folders as ``CodebookRun``s sorted by K. RunFolderError for a folder without a
    codebook size or two folders with the same K."""
    runs = []
    for path in map(Path, run_dirs):
        results = load_runs([path])
        run = results.runs[0]
        latents = run.manifest.get("latents") or {}
        if not latents.get("codebook_size"):
            raise RunFolderError(f"{path}: {MANIFEST} has no latents.codebook_size (not a benchmarks.run folder?)")
        K = int(latents["codebook_size"])
        if any(r.K == K for r in runs):
            raise RunFolderError(f"{path}: K = {K} is already given by another run folder; give one folder per K")
        jobs = _job_costs(run.manifest)
        conv = convergence(results)
        per_step = (jobs["train_cpu_s"] / jobs["step"]).rename("cpu_per_step")
        conv = conv.join(per_step, on=["method", "seed"])
        conv["train_cpu_s"] = conv["step"] * conv.pop("cpu_per_step")
        runs.append(CodebookRun(K, run.name, results, conv, jobs, latents))
    return sorted(runs, key=lambda r: r.K)


def _job_costs(manifest: dict) -> pd.DataFrame:
    """The manifest's job summaries indexed by (method, seed); missing quantities are NaN."""
    columns = ["step", "flops_per_step", "train_wall_s", "train_cpu_s", "peak_step_bytes"]
    rows = [
        {"method": job.get("method"), "seed": job.get("seed"), **{c: job.get(c, np.nan) for c in columns}}
        for job in (manifest.get("jobs") or {}).values()
        if isinstance(job, dict)
    ]
    frame = pd.DataFrame(rows, columns=["method", "seed", *columns])
    return frame.astype(dict.fromkeys(columns, float)).set_index(["method", "seed"]).sort_index()


def methods_of(study: list[CodebookRun]) -> list[str]:
    """The methods of the study's runs, in the reports' order (purr first)."""
    return order_variants({m for run in study for m in run.conv["variant"]})


# ---------------------------------------------------------------------------------------- tables
def tokenizer_table(study: list[CodebookRun]) -> pd.DataFrame:
    """Per K: codebook usage over the training images, reconstruction error, tokenizer floor."""
    rows = []
    for run in study:
        lat, floor = run.latents, run.results.floors
        floor = floor.iloc[0] if not floor.empty else pd.Series(dtype=object)
        rows.append(
            {
                "K": run.K,
                "codes used": f"{lat.get('codes_used', np.nan):,.0f}",
                "dead codes": f"{lat.get('dead_codes', np.nan):,.0f}",
                "perplexity": f"{lat.get('perplexity', np.nan):,.1f}",
                "perplexity / K": f"{lat.get('perplexity_per_code', np.nan):.3f}",
                "recon MSE": f"{lat.get('recon_mse', np.nan):.4f}",
                "floor FID": f"{floor.get('fid', np.nan):.2f}",
                "floor class acc.": f"{floor.get('class_accuracy', np.nan):.3f}",
            }
        )
    return pd.DataFrame(rows)


def final_rows(study: list[CodebookRun]) -> pd.DataFrame:
    """Tidy per-seed finals: K, method, seed, step (the last checkpoint every seed of the method
    has), fid, class_accuracy, and the floor's FID and class accuracy."""
    rows = []
    for run in study:
        floor = run.results.floors.iloc[0] if not run.results.floors.empty else {}
        for method in order_variants(run.conv["variant"]):
            here = run.conv[run.conv["variant"] == method]
            steps, _, seeds = seed_matrix(here)
            last = here[(here["step"] == steps[-1]) & here["seed"].isin(seeds)].sort_values("seed")
            for r in last.itertuples():
                rows.append(
                    {
                        "K": run.K,
                        "method": method,
                        "seed": int(r.seed),
                        "step": int(r.step),
                        "fid": float(r.fid),
                        "class_accuracy": float(getattr(r, "class_accuracy", np.nan)),
                        "floor_fid": float(floor.get("fid", np.nan)),
                        "floor_class_accuracy": float(floor.get("class_accuracy", np.nan)),
                    }
                )
    return pd.DataFrame(rows)


def final_table(finals: pd.DataFrame) -> pd.DataFrame:
    """Per K and method: final FID and class accuracy, mean ± s.d. over seeds."""
    rows = []
    for (K, method), g in finals.groupby(["K", "method"], sort=False):
        rows.append(
            {
                "K": K,
                "method": method,
                "seeds": len(g),
                "step": int(g["step"].iloc[0]),
                "final FID": mean_sd(g["fid"], 1),
                "final class acc.": mean_sd(g["class_accuracy"], 3),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Comparison:
    """Purrception against one baseline at one K along one axis: the point estimate and the
    bootstrap interval (None with one seed each). Where Purrception's mean curve never reaches the
    baseline's final FID, ``reverse`` and ``reverse_bounds`` give the other direction: the
    baseline's speed-up over Purrception to Purrception's final FID (how far behind it is)."""

    K: int
    baseline: str
    axis: str
    point: Speedup
    bounds: tuple[Speedup, Speedup] | None
    reverse: Speedup | None = None
    reverse_bounds: tuple[Speedup, Speedup] | None = None


def comparisons(study: list[CodebookRun]) -> list[Comparison]:
    """Purrception's speed-up over every other method of each run at the baseline's full budget
    (its final FID as the target), along each axis in ``AXES`` that the run recorded."""
    out = []
    for run in study:
        if PURR not in set(run.conv["variant"]):
            continue
        p_rows = run.conv[run.conv["variant"] == PURR]
        for base in (m for m in order_variants(run.conv["variant"]) if m != PURR):
            b_rows = run.conv[run.conv["variant"] == base]
            for axis in AXES:
                p_x, p_fid, _ = seed_matrix(p_rows, axis)
                b_x, b_fid, _ = seed_matrix(b_rows, axis)
                if p_fid.shape[1] == 0 or b_fid.shape[1] == 0 or np.isnan(np.r_[p_x, b_x]).any():
                    continue  # no common checkpoints, or the axis is not recorded
                point, bounds = speedup(p_x, p_fid, b_x, b_fid), bootstrap_interval(p_x, p_fid, b_x, b_fid)
                reverse = reverse_bounds = None
                if point.kind == NOT_REACHED:  # the roles swapped: the baseline to Purrception's final FID
                    reverse, reverse_bounds = (
                        speedup(b_x, b_fid, p_x, p_fid),
                        bootstrap_interval(b_x, b_fid, p_x, p_fid),
                    )
                out.append(Comparison(run.K, base, axis, point, bounds, reverse, reverse_bounds))
    return out


def speedup_rows(found: list[Comparison]) -> pd.DataFrame:
    """Tidy speed-ups (the figure's data): K, baseline, axis, ratio, kind, and the interval's ends."""
    rows = []
    for c in found:
        lo, hi = c.bounds if c.bounds else (None, None)
        rows.append(
            {
                "K": c.K,
                "baseline": c.baseline,
                "axis": AXES[c.axis],
                "speedup": c.point.ratio,
                "kind": c.point.kind,
                "target_fid": c.point.target,
                "ci_low": lo.ratio if lo else np.nan,
                "ci_low_kind": lo.kind if lo else "",
                "ci_high": hi.ratio if hi else np.nan,
                "ci_high_kind": hi.kind if hi else "",
                **_reverse_columns(c),
            }
        )
    return pd.DataFrame(rows)


def _reverse_columns(c: Comparison) -> dict:
    """The baseline's speed-up over Purrception (NaN where Purrception reached the target)."""
    lo, hi = c.reverse_bounds if c.reverse_bounds else (None, None)
    return {
        "reverse_speedup": c.reverse.ratio if c.reverse else np.nan,
        "reverse_kind": c.reverse.kind if c.reverse else "",
        "reverse_target_fid": c.reverse.target if c.reverse else np.nan,
        "reverse_ci_low": lo.ratio if lo else np.nan,
        "reverse_ci_high": hi.ratio if hi else np.nan,
    }


def reverse_table(found: list[Comparison]) -> pd.DataFrame:
    """Where Purrception never reaches a baseline's final FID: per K and baseline, Purrception's
    final FID and the baseline's speed-up to it (with its interval) per axis."""
    rows: dict[tuple[int, str], dict] = {}
    for c in (c for c in found if c.reverse is not None):
        first = {"K": c.K, "baseline": c.baseline, "purr's final FID": f"{c.reverse.target:.1f}"}
        row = rows.setdefault((c.K, c.baseline), first)
        row[f"{c.baseline} faster ({AXES[c.axis]})"] = format_speedup(c.reverse)
        row[f"95% CI ({AXES[c.axis]})"] = format_interval(c.reverse_bounds)
    return pd.DataFrame(list(rows.values()))


def speedup_table(found: list[Comparison]) -> pd.DataFrame:
    """One row per K and baseline: the target FID and the speed-up with its interval per axis."""
    rows: dict[tuple[int, str], dict] = {}
    for c in found:
        first = {"K": c.K, "baseline": c.baseline, "target FID": f"{c.point.target:.1f}"}
        row = rows.setdefault((c.K, c.baseline), first)
        row[AXES[c.axis]] = format_speedup(c.point)
        row[f"95% CI ({AXES[c.axis]})"] = format_interval(c.bounds)
    return pd.DataFrame(list(rows.values()))


def cost_rows(study: list[CodebookRun]) -> pd.DataFrame:
    """Tidy per-seed costs of a training step relative to cfm's with the same seed: K, method,
    seed, quantity, ratio. Quantities: FLOPs, CPU s, wall s and peak memory per step."""
    quantities = {
        "FLOPs": lambda j: j["flops_per_step"],
        "CPU s": lambda j: j["train_cpu_s"] / j["step"],
        "wall s": lambda j: j["train_wall_s"] / j["step"],
        "peak memory": lambda j: j["peak_step_bytes"],
    }
    rows = []
    for run in study:
        if BASELINE not in run.jobs.index.get_level_values("method"):
            continue
        base = run.jobs.loc[BASELINE]
        for method in (m for m in methods_of([run]) if m != BASELINE and m in run.jobs.index):
            jobs = run.jobs.loc[method]
            for seed in sorted(set(jobs.index) & set(base.index)):
                for quantity, of in quantities.items():
                    ratio = of(jobs.loc[seed]) / of(base.loc[seed])
                    if np.isfinite(ratio):
                        rows.append({"K": run.K, "method": method, "seed": int(seed), "quantity": quantity})
                        rows[-1]["ratio"] = ratio
    return pd.DataFrame(rows, columns=["K", "method", "seed", "quantity", "ratio"])


def cost_table(study: list[CodebookRun], ratios: pd.DataFrame) -> pd.DataFrame:
    """Per K and method: a training step's FLOPs, CPU and wall milliseconds and peak memory (mean ±
    s.d. over seeds), and each as a ratio to cfm's step (per-seed ratios, mean ± s.d.)."""
    rows = []
    for run in study:
        for method in methods_of([run]):
            if method not in run.jobs.index:
                continue
            j = run.jobs.loc[method]
            row = {
                "K": run.K,
                "method": method,
                "GFLOP / step": f"{j['flops_per_step'].mean() / 1e9:.2f}",
                "CPU ms / step": mean_sd(1e3 * j["train_cpu_s"] / j["step"], 1),
                "wall ms / step": mean_sd(1e3 * j["train_wall_s"] / j["step"], 1),
                "peak MiB / step": mean_sd(j["peak_step_bytes"] / MIB, 1),
            }
            here = ratios[(ratios["K"] == run.K) & (ratios["method"] == method)]
            for quantity in ("FLOPs", "CPU s", "wall s", "peak memory"):
                values = here.loc[here["quantity"] == quantity, "ratio"]
                row[f"{quantity} / cfm"] = mean_sd(values, 2) if method != BASELINE else "1"
            rows.append(row)
    return pd.DataFrame(rows)


def paper_flops(config: dict = PAPER_CONFIG, methods: tuple[str, ...] = ("purr", "cfm", "dfm")) -> dict[str, int]:
    """Training FLOPs per image of each method's backbone in the paper's setting, counted on the
    meta device (``benchmarks.training.flops.model_flops``; seconds for DiT-XL/2). Imports torch."""
    import torch

    from benchmarks.training.flops import model_flops
    from methods import get_method

    codebook = torch.empty(config["codebook_size"], config["code_dim"], device="meta")
    return {
        m: model_flops(config["backbone"], get_method(m)(codebook).backbone_io(), config["grid"], config["num_classes"])
        for m in methods
    }


def paper_table(study: list[CodebookRun], found: list[Comparison], paper: dict[str, int]) -> pd.DataFrame:
    """Per K and baseline: the head's FLOP share here against cfm, the measured iteration and FLOP
    speed-ups, and the FLOP speed-up the iteration speed-up implies at the paper's costs per step:
    iteration speed-up x (baseline FLOPs / Purrception FLOPs) at DiT-XL/2, K = 16384."""
    point = {(c.K, c.baseline, c.axis): c.point for c in found}
    rows = []
    for run in study:
        flops = run.jobs["flops_per_step"].groupby(level="method").mean()
        for base in (m for m in methods_of([run]) if m != PURR):
            iters = point.get((run.K, base, "step"))
            if iters is None or PURR not in flops or base not in flops:
                continue
            implied = Speedup(iters.ratio * paper[base] / paper[PURR], iters.kind, iters.target, 0.0, 0.0)
            per_flop = point.get((run.K, base, "train_flops"))
            rows.append(
                {
                    "K": run.K,
                    "baseline": base,
                    "purr FLOPs / baseline's here": f"{flops[PURR] / flops[base]:.2f}",
                    "iters speed-up": format_speedup(iters),
                    "FLOPs speed-up here": format_speedup(per_flop) if per_flop else "-",
                    f"purr FLOPs / baseline's at {PAPER_CONFIG['backbone']}": f"{paper[PURR] / paper[base]:.3f}",
                    f"implied FLOPs speed-up at {PAPER_CONFIG['backbone']}": format_speedup(implied),
                }
            )
    return pd.DataFrame(rows)


def verdicts(found: list[Comparison]) -> list[str]:
    """Per baseline and axis, the codebook sizes where Purrception is ahead (the interval lies
    above 1), behind (below 1) or indistinguishable (it contains 1)."""
    lines = []
    for base in order_variants({c.baseline for c in found}):
        for axis, label in AXES.items():
            here = [c for c in found if c.baseline == base and c.axis == axis]
            if not here:
                continue
            groups: dict[str, list[str]] = {"ahead": [], "behind": [], "indistinguishable": []}
            for c in sorted(here, key=lambda c: c.K):
                text = f"{format_speedup(c.point)}, {format_interval(c.bounds)}"
                if c.reverse is not None:
                    text += f"; {base} {format_speedup(c.reverse)} faster, {format_interval(c.reverse_bounds)}"
                groups[_side(c)].append(f"{c.K} ({text})")
            said = "; ".join(f"{side} at K = {', '.join(ks)}" for side, ks in groups.items() if ks)
            lines.append(f"- vs {base}, per {label}: {said}.")
    return lines


def _side(c: Comparison) -> str:
    """'ahead', 'behind' or 'indistinguishable' by the interval (by the point with one seed). A
    `not reached` end is an upper bound on the ratio and an `>=` end a lower bound."""
    lo, hi = c.bounds if c.bounds else (c.point, c.point)
    if lo.kind != NOT_REACHED and lo.ratio > 1:
        return "ahead"
    if hi.kind != AT_LEAST and (hi.ratio < 1 or (hi.kind == NOT_REACHED and hi.ratio <= 1)):
        return "behind"
    return "indistinguishable"


# ---------------------------------------------------------------------------------------- report
SETUP_TEXT = """\
One run folder per codebook size K: the same data, backbone, recipe, methods and seeds; only the
tokenizer's codebook changes. Final values are the cheap cell (the sampler setting evaluated at
every checkpoint) at the last checkpoint every seed has, mean ± s.d. over seeds.
"""

SPEEDUP_TEXT = """\
Purrception's speed-up over each baseline at the baseline's full budget (target: its final FID),
along four axes. `iters` and `FLOPs` as in the benchmark report; `wall s` uses the training
wall-clock seconds at each checkpoint; `CPU s` the training CPU seconds (a job's CPU seconds per
step times the step), which stay comparable when runs shared the cores. Only the full budget
(`all` below) is used. Interval: percentile bootstrap over seeds, as below.
"""

COST_TEXT = """\
A training step's cost: FLOPs per step (forward and backward, counted from the model), CPU and
wall milliseconds per step (the jobs' training time over their steps), and the peak bytes of live
tensors over one steady-state step (parameters, gradients, EMA, optimizer moments and
activations). `/ cfm`: the ratio to cfm's step with the same seed, mean ± s.d. over seeds. Where
`CPU s / cfm` exceeds `FLOPs / cfm`, the method's extra work (the K-logit head, its softmax and
the cross-entropy) runs at a lower FLOP rate than the trunk.
"""

PAPER_TEXT = """\
A small trunk exaggerates the head: in the paper's setting ({backbone} on a {g0}x{g1} grid of
K = {K}) the K-logit head makes a Purrception step {share:.1%} dearer than a cfm step, by the same
FLOP count. If the iteration speed-up measured at a K carried over to that trunk, the FLOP
speed-up there would be the iteration speed-up times the baseline's FLOPs per step over
Purrception's at {backbone} (last column). That is an extrapolation: it assumes the iteration
speed-up does not depend on the trunk.
"""


def render(
    names: list[str],
    tokenizer: pd.DataFrame,
    finals: pd.DataFrame,
    speedups: pd.DataFrame,
    reverse: pd.DataFrame,
    said: list[str],
    costs: pd.DataFrame,
    paper: pd.DataFrame,
    paper_share: float,
    figures: list[FigureEntry],
    notes: list[str],
) -> str:
    """report.md (deterministic given the inputs)."""
    cfg = PAPER_CONFIG
    parts = [
        "# Codebook-size study\n",
        "Built by `python -m reports.codebook` from the run folders' files alone: "
        + ", ".join(f"`{n}`" for n in names)
        + ".\n",
        SETUP_TEXT,
        "## Tokenizer per K\n",
        "Usage over the training images' codes; the floor is the tokenizer's reconstructions scored like samples.\n",
        table(tokenizer),
        "## Final FID and class accuracy\n",
        table(finals),
        "## Speed-ups against K\n",
        SPEEDUP_TEXT,
        table(speedups),
        *(
            [
                "Where Purrception never reaches the baseline's final FID (`not reached`), the other direction: "
                "the baseline's speed-up over Purrception to Purrception's final FID.\n",
                table(reverse),
            ]
            if not reverse.empty
            else []
        ),
        "Where Purrception stands, by the 95% intervals:\n",
        "".join(line + "\n" for line in said) or "_(no comparisons)_\n",
        "## Cost of a training step\n",
        COST_TEXT,
        table(costs),
        "## At the paper's head share\n",
        PAPER_TEXT.format(
            backbone=cfg["backbone"], g0=cfg["grid"][0], g1=cfg["grid"][1], K=cfg["codebook_size"], share=paper_share
        ),
        table(paper),
        "## How the speed-ups are computed\n",
        SPEEDUP_METHOD,
        "## Figures\n",
    ]
    for f in figures:
        picture = f"![{f.title}](figures/{f.name}.png)"
        parts.append(f"### {f.title}\n\n{picture}\n\n{f.caption} Data: `figures/{f.name}.csv`.\n")
    if notes:
        parts += ["## Notes\n", "".join(f"- {n}\n" for n in notes)]
    return "\n".join(parts)


def build(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Build the study's report of ``run_dirs`` (one per K) into ``out`` and return ``out``."""
    from reports import codebook_figures as CF

    run_dirs = [Path(d) for d in run_dirs]
    study = load_study(run_dirs)
    out = Path(out) if out is not None else run_dirs[0].resolve().parent / "report"
    check_out(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.iterdir():
        if stale.suffix in (".png", ".pdf", ".csv") and stale.is_file():
            stale.unlink()
    finals, found = final_rows(study), comparisons(study)
    ratios = cost_rows(study)
    paper = paper_flops()
    entries = CF.draw(study, finals, speedup_rows(found), ratios, fig_dir)
    notes = [f"run '{r.name}' (K = {r.K}): {n}" for r in study for n in r.results.notes]
    text = render(
        [r.name for r in study],
        tokenizer_table(study),
        final_table(finals),
        speedup_table(found),
        reverse_table(found),
        verdicts(found),
        cost_table(study, ratios),
        paper_table(study, found, paper),
        paper[PURR] / paper[BASELINE] - 1.0,
        entries,
        notes,
    )
    save_with(lambda tmp: tmp.write_text(text), out / REPORT_FILE)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.codebook", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="one run folder per codebook size")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <parent of the first RUN_DIR>/report)"
    )
    args = p.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeWarning)  # one folder per K: nothing is merged
        try:
            out = build(args.run_dirs, args.out)
        except (RunFolderError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"report: {out / REPORT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
