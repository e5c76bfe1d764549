"""Render the report's tables and figure links as Markdown (``report.md``).

The text depends only on the inputs: no timestamps, no absolute paths, sorted rows, fixed
number formats; rebuilding from the same run folders gives a byte-identical file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reports.speedup import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE


@dataclass(frozen=True)
class FigureEntry:
    name: str  # file stem under figures/
    title: str
    caption: str


def table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (missing values as '-'; '|' escaped)."""
    if frame.empty:
        return "_(none)_\n"
    cells = frame.astype(object).where(frame.notna(), "-").astype(str)
    cells = cells.apply(lambda col: col.str.replace("|", "\\|", regex=False))
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


SPEEDUP_METHOD = f"""\
Targets: the FID each baseline reaches with a quarter, half and all of its budget (`budget` 1/4,
1/2, all): the mean over its seeds of the FID curve at that many iterations (at the checkpoint
there, or interpolated between the two around it linearly in (log iterations, log FID)); for
`all` it is the baseline's final FID. Speed-up = (the baseline's iterations at the target) /
(iterations Purrception needs to reach that FID); the FLOPs columns do the same with training
FLOPs. Purrception's iterations are where its mean-over-seeds curve first reaches the target,
interpolated between the two checkpoints around the crossing linearly in (log iterations, log
FID), which is exact for power-law curves. `>=r`: Purrception's first checkpoint already reaches
the target (it may have got there earlier), so the speed-up is at least r. `not reached (<r)`:
its curve never reaches the target, so the speed-up is below r = baseline iterations /
Purrception's last checkpoint. A budget share before the baseline's first checkpoint has no row.

Confidence intervals: percentile bootstrap over seeds with {BOOTSTRAP_RESAMPLES} resamples. Each
resample draws each method's seeds with replacement (as many as it has), recomputes both mean
curves, the target and the ratio; the interval runs from the {100 * (1 - CONFIDENCE) / 2:g}th to the
{100 * (1 + CONFIDENCE) / 2:g}th percentile of the resampled ratios (order statistics; "not reached"
resamples rank lowest, `>=` ones highest). The generator is NumPy's `default_rng({BOOTSTRAP_SEED})`
for every comparison, so the table is reproducible. With a handful of seeds the interval is coarse.
"""

DEFAULT_TAU_TEXT = """\
Each method at its default temperature (its cheap cell; `τ (P/B)`: Purrception's and the
baseline's), as in the paper.
"""

BEST_TAU_TEXT = """\
Each method at its best temperature, so that a tuned Purrception is not only compared with
untuned baselines: among the temperatures a method was evaluated at along training (every
checkpoint of its default curve, same sampler steps, CFG and samples), the one with the lowest
mean FID at the last checkpoint; speed-ups as above on those curves. `sweep's best τ` is the best
of the last-checkpoint temperature sweep (see Results); where it differs from the curve's τ, the
sweep's best was evaluated at the last checkpoint only, so its curve along training is unknown
and it is not used.
"""

NO_BEST_TAU_TEXT = """\
_No method has a curve along training at a temperature other than its default (the sweep is at
one checkpoint only), so there are no best-temperature speed-ups; `at: every` cells at other
temperatures give them (as `benchmarks/configs/convergence.yaml` has)._
"""

RESULTS_METHOD = """\
Final FID: the cheap cell (the sampler setting evaluated at every checkpoint) at the last
checkpoint every seed has, mean ± s.d. over seeds (sample s.d.). Best τ: the temperature with the
lowest mean FID in the temperature sweep (its checkpoint and sampler steps in brackets); its FID
as mean ± s.d. over seeds. Train wall s: training time to the final checkpoint, mean ± s.d.
Final class acc.: the fraction of the cheap cell's samples that the evaluation classifier assigns
to the label they were generated for (the floor's is the reconstructions': the ceiling). It is `-`
where the feature extractor's logits are not the dataset's classes: `inception-v3-compat`'s 1008
logits follow TensorFlow's 2015 ImageNet label map, not the dataset's class indices.
"""


VARIANTS_TEXT = """\
The merged runs differ in settings, so curves are labelled by what tells them apart: a method's
own options that differ between its runs, and the shared training recipe where runs differ in it
(long recipes are named `recipe 1`, `recipe 2`, ...). Speed-ups only compare variants that share a
recipe.
"""


def render(
    *,
    runs: list[str],
    setup: pd.DataFrame,
    results: pd.DataFrame,
    other_cells: pd.DataFrame,
    floors: pd.DataFrame,
    speedups: pd.DataFrame,
    best_speedups: pd.DataFrame | None,
    variants: pd.DataFrame,
    best_within_nfe: pd.DataFrame | None = None,
    meanings: pd.DataFrame,
    figures: list[FigureEntry],
    notes: list[str],
    diverged: list[str] | None = None,
) -> str:
    """report.md; ``best_speedups`` None when no method has curves at several temperatures;
    ``best_within_nfe`` None when no method was evaluated with several samplers."""
    parts = [
        "# Benchmark report\n",
        "Built by `python -m reports` from the run folders' files alone (in merge order): "
        + ", ".join(f"`{r}`" for r in runs)
        + ".\n",
        "## Setup\n",
        table(setup),
    ]
    if not variants.empty:
        parts += ["## Variants\n", VARIANTS_TEXT, table(variants)]
    parts += ["## Results\n", RESULTS_METHOD, table(results)]
    if diverged:
        parts += [
            "### Diverged jobs\n",
            "Training stopped at a non-finite loss or gradient; these jobs have no results after that step.\n",
            "".join(f"- {d}\n" for d in diverged),
        ]
    if not other_cells.empty:
        parts += [
            "### Other evaluations\n",
            "Cells that are neither the cheap cell nor the temperature sweep (e.g. the final cell with CFG), "
            "FID as mean ± s.d. over seeds, the other metrics as means.\n",
            table(other_cells),
        ]
    if best_within_nfe is not None:
        parts += [
            "### Best sampler within an inference budget\n",
            "Per method and budget of network evaluations per sample (NFE, guidance included): the sampler "
            "and step count with the lowest FID (mean ± s.d. over seeds) among those whose NFE fits the budget, "
            "at the last checkpoint and the method's default temperature; beside it, Euler's lowest FID within "
            "the same budget. The minimum over many noisy cells favours whichever setting drew a lucky "
            "sample: read a difference smaller than the s.d. as a tie.\n",
            table(best_within_nfe),
        ]
    parts += [
        "## Tokenizer floor\n",
        "The tokenizer's reconstructions of the reference images, scored like samples: no method on "
        "these latents can do better.\n",
        table(floors),
        "## Speed-ups\n",
        SPEEDUP_METHOD,
    ]
    if speedups.empty:
        parts.append("_No Purrception variant and baseline share a backbone and recipe in these runs._\n")
    else:
        parts += [
            "### At each method's default temperature\n",
            DEFAULT_TAU_TEXT,
            table(speedups),
            "### At each method's best temperature\n",
        ]
        parts += [BEST_TAU_TEXT, table(best_speedups)] if best_speedups is not None else [NO_BEST_TAU_TEXT]
    parts += ["## What temperature means per method\n", table(meanings), "## Figures\n"]
    for fig in figures:
        parts.append(
            f"### {fig.title}\n\n{fig.caption} ([PDF](figures/{fig.name}.pdf), "
            f"[data](figures/{fig.name}.csv))\n\n![{fig.title}](figures/{fig.name}.png)\n"
        )
    if not figures:
        parts.append("_No figures: the runs hold no evaluations or training logs._\n")
    parts.append("## Merge notes\n")
    parts.append(
        "".join(f"- {n}\n" for n in notes) if notes else "_None: no duplicate cells, every run has its config._\n"
    )
    return "\n".join(parts)
