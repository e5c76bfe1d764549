"""Reports from small constructed run folders (no training): files, the data behind each figure,
speed-ups against known answers, bootstrap intervals, merging, z-loss labels, reproducibility."""

from __future__ import annotations

import json
import math
import warnings

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

import reports
from benchmarks.storage.run_dir import LAYOUT_KEY, LAYOUT_VERSION, GridLayout, SampleGrid, sidecar_path, write_sidecar
from reports import figures as F
from reports.__main__ import main as reports_main
from reports.build import report_text
from reports.curves import cheap_cells, convergence, sample_grids, sweeps
from reports.load import CELL_KEY, TRACE_KEY, RunFolderError, load_runs
from reports.speedup import (
    AT_LEAST,
    EXACT,
    NOT_REACHED,
    bootstrap_interval,
    first_reach,
    format_interval,
    format_speedup,
    speedup,
    value_at,
)
from reports.tables import speedup_table
from tests.support.reports import assert_same_report

STEPS = [10, 20, 30, 40]
TEMPS = [0.8, 1.2]  # the sweep; purr's cheap cell adds 0.9, the others' 1.0
SAMPLER_STEPS = [4, 16]  # ``at: last`` cells beside the cheap cell's 8 steps: FID = cheap FID * (8 / steps)^0.5
K = 32
CLASSES, TILE, GRID_SAMPLES = 10, 4, 24  # sample grids: 10 columns of 4x4 images, 2 full rows + 4
TAU_GAIN = {"purr": 1.1, "cfm": 0.5}  # an ``at: every`` cell at τ = 0.8 (``every_taus``) scales the cheap FID
FLOPS_PER_STEP = {"purr": 3.0e9, "cfm": 2.0e9}
SCALE = {"purr": 100.0, "cfm": 240.0}  # FID = scale / step * (1 + 0.1 * seed): power laws
FLOOR = {
    "fid": 1.5,
    "kid_mean": 0.001,
    "kid_std": 0.0005,
    "precision": 0.9,
    "recall": 0.8,
    "isc": 2.0,
    "class_accuracy": 0.97,
    "psnr": 25.0,
    "n_samples": 100,
    "tokenizer": "vqvae",
    "feature_extractor": "mnist-cnn-abc",
    "ref_stats": "mnist5k-123",
    "eval_wall_s": 1.0,
}


def fid_of(method: str, seed: int, step: int, tau: float | None = None) -> float:
    base = SCALE[method] / step * (1 + 0.1 * seed)
    return base if tau is None else base * (1 + (tau - 0.9) ** 2)


def class_accuracy_of(method: str, seed: int, step: int) -> float:
    return step / (50.0 if method == "purr" else 80.0) - 0.01 * seed


def config(seed: int, z_loss: float = 1e-5, methods=("purr", "cfm"), lr: float = 1e-3, every_taus=()) -> dict:
    options = {"purr": {"z_loss": z_loss}, "cfm": {}}
    cell = {"steps": 8, "temperature": None, "cfg_scale": 1.0, "at": "every", "num_samples": None}
    return {
        "name": "test",
        "description": "constructed",
        "backbone": "tiny/1",
        "methods": {m: options[m] for m in methods},
        "data": {"dataset": "mnist5k", "path": None, "image_size": TILE, "reference": None},
        "tokenizer": {"kind": "vqvae", "ckpt": None, "vqvae": {"codebook_size": K}},
        "train": {"iterations": 40, "batch_size": 32, "lr": lr, "seed": seed, "checkpoint_every": 10, "log_every": 5},
        "eval": {
            "num_samples": 100,
            "cells": [
                cell,
                *({**cell, "temperature": t} for t in every_taus),
                *({**cell, "steps": n, "at": "last"} for n in SAMPLER_STEPS),
            ],
            "temperatures": TEMPS,
            "sweep_steps": 8,
            "sweep_at": None,
            "sweep_samples": None,
            "method_temperature": {"purr": 0.9},
            "grid_samples": GRID_SAMPLES,
        },
        "launcher": {"kind": "local"},
    }


def grid_png(path, value: float, corner: float) -> None:
    """A sample grid as the evaluator tiles it: GRID_SAMPLES tiles of TILE px, CLASSES per row,
    2 px white padding, the last row part-filled (white). Tile i is filled with ``value`` plus i/1000."""
    step = TILE + 2
    rows = -(-GRID_SAMPLES // CLASSES)
    image = np.ones((rows * step + 2, CLASSES * step + 2))
    for i in range(GRID_SAMPLES):
        r, c = divmod(i, CLASSES)
        image[2 + r * step : 2 + r * step + TILE, 2 + c * step : 2 + c * step + TILE] = value + i / 1000
    image[2, 2] = corner
    matplotlib.image.imsave(path, image, cmap="gray", vmin=0, vmax=1)


def metric_row(method, seed, step, tau, fid, run="run") -> dict:
    return {
        "run": run,
        "method": method,
        "seed": seed,
        "step": step,
        "images_seen": step * 32,
        "train_flops": step * FLOPS_PER_STEP[method],
        "train_wall_s": step * 0.5 * (1 + seed),
        "backbone": "tiny/1",
        "params": 1000 if method == "purr" else 900,
        "tokenizer": "vqvae",
        "sampler": "euler",
        "steps": 8,
        "nfe": 8,
        "temperature": tau,
        "cfg_scale": 1.0,
        "n_samples": 100,
        "feature_extractor": "mnist-cnn-abc",
        "ref_stats": "mnist5k-123",
        "fid": fid,
        "kid_mean": 0.01,
        "kid_std": 0.001,
        "precision": 0.5,
        "recall": 0.5,
        "isc": 2.0,
        "class_accuracy": class_accuracy_of(method, seed, step),
        "entropy": float("nan"),
        "eval_wall_s": 1.0,
        "git_commit": "abc",
    }


def make_run(
    root,
    name="run",
    seeds=(0,),
    methods=("purr", "cfm"),
    z_loss=1e-5,
    fid=fid_of,
    floor=FLOOR,
    lr=1e-3,
    every_taus=(),
    sidecars=False,
):
    """A run folder as benchmarks.run writes it: cheap cell at every step (and at ``every_taus``,
    FID scaled by TAU_GAIN), sweep and 4/16 sampler steps at the last step, traces for purr, train
    logs, PNG grids of the sweep. ``sidecars``: of the current layout (grids with sidecars), else
    of layout 1 (as the committed results)."""
    run = root / name
    run.mkdir(parents=True)
    rows, traces = [], []
    for method in methods:
        cheap = 0.9 if method == "purr" else 1.0
        for seed in seeds:
            for step in STEPS:
                rows.append(metric_row(method, seed, step, cheap, fid(method, seed, step), name))
                rows += [
                    metric_row(method, seed, step, tau, fid(method, seed, step) * TAU_GAIN[method], name)
                    for tau in every_taus
                    if tau != cheap
                ]
            for tau in TEMPS:
                if tau not in every_taus:
                    rows.append(metric_row(method, seed, STEPS[-1], tau, fid(method, seed, STEPS[-1], tau), name))
            for n in SAMPLER_STEPS:
                row = metric_row(method, seed, STEPS[-1], cheap, fid(method, seed, STEPS[-1]) * (8 / n) ** 0.5, name)
                rows.append({**row, "steps": n, "nfe": n})
            final = metric_row(method, seed, STEPS[-1], cheap, fid(method, seed, STEPS[-1]) / 2, name)
            rows.append({**final, "steps": 16, "nfe": 32, "cfg_scale": 1.5})  # an ``at: last`` CFG cell
            if method == "purr":
                for tau in [0.8, 0.9, 1.2]:
                    for t in np.arange(8) / 8:
                        traces.append(
                            {
                                "method": method,
                                "seed": seed,
                                "step": STEPS[-1],
                                "steps": 8,
                                "temperature": tau,
                                "cfg_scale": 1.0,
                                "t": t,
                                "entropy": math.log(K) * (1 - t) * tau * (1 + 0.1 * seed),
                            }
                        )
            log = pd.DataFrame({"step": np.arange(5, 45, 5), "images_seen": np.arange(5, 45, 5) * 32})
            log["loss"] = 1.0 / log["step"] + 0.01 * seed
            if method == "purr":
                log["ce"] = log["loss"]
                log["logsumexp"] = log["step"] * (0.1 if z_loss == 0 else 0.01)
            else:
                log["mse"] = log["loss"]
            log["grad_norm"], log["train_wall_s"], log["steps_per_s"] = 1.0, log["step"] * 0.5, 2.0
            (run / method / f"seed{seed}").mkdir(parents=True)
            log.to_csv(run / method / f"seed{seed}" / "train_log.csv", index=False)
            grid_dir = run / "samples" / method / f"seed{seed}"
            grid_dir.mkdir(parents=True)
            for tau in sorted(set(TEMPS) | {cheap}):
                path = grid_dir / f"step{STEPS[-1]:09d}_steps8_tau{tau:g}_cfg1_n100.png"
                grid_png(path, tau / 2.0, seed / 10)
                if sidecars:
                    layout = GridLayout.tiled([i % CLASSES for i in range(GRID_SAMPLES)], CLASSES, TILE)
                    write_sidecar(SampleGrid(path, method, seed, STEPS[-1], "euler", 8, tau, 1.0, 100, layout))
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    if traces:
        pd.DataFrame(traces).to_csv(run / "traces.csv", index=False)
    jobs = {
        f"{m}/seed{s}": {
            "method": m,
            "seed": s,
            "step": 40,
            "params": 1000 if m == "purr" else 900,
            "flops_per_step": FLOPS_PER_STEP[m],
            "train_wall_s": 20.0,
        }
        for m in methods
        for s in seeds
    }
    manifest = {
        "config": config(seeds[0], z_loss, methods, lr, every_taus),
        "methods": list(methods),
        "seeds": list(seeds),
        "jobs": jobs,
        "git_commit": "abc",
        "latents": {"codebook_size": K, "tokenizer": "vqvae", "num_classes": CLASSES},
        **({LAYOUT_KEY: LAYOUT_VERSION} if sidecars else {}),
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    if floor is not None:
        (run / "tokenizer_floor.json").write_text(json.dumps(floor))
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path, seeds=(0, 1))


class Capture:
    """Figures saved by reports.figures, by name (to read their lines and images)."""

    def __init__(self):
        self.figs, self.original = {}, F.save

    def __call__(self, fig, out_dir, name):
        self.figs[name] = fig
        return self.original(fig, out_dir, name)


@pytest.fixture
def captured(monkeypatch):
    capture = Capture()
    monkeypatch.setattr(F, "save", capture)
    return capture.figs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One full report of a two-seed run (matplotlib is slow here: build as few as possible)."""
    run = make_run(tmp_path_factory.mktemp("built"), seeds=(0, 1))
    capture = Capture()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "save", capture)
        out = reports.build_report([run])
    return run, out, capture.figs


def lines_by_label(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def mean_over_seeds(method, steps, tau=None):
    return np.array([np.mean([fid_of(method, s, step, tau) for s in (0, 1)]) for step in steps])


# ----------------------------------------------------------------------------- end to end

FIGURES = [
    "fid_vs_iterations",
    "fid_vs_flops",
    "fid_vs_wall_clock",
    "fid_vs_steps",
    "class_accuracy_vs_iterations",
    "fid_vs_temperature",
    "samples_purr",
    "samples_cfm",
    "train_loss",
    "entropy_vs_t",
]


def test_build_report_writes_every_figure_and_table(built):
    run, out, figs = built
    assert out == run / "report"
    text = (out / "report.md").read_text()
    for name in FIGURES:
        for ext in ("png", "pdf", "csv"):
            path = out / "figures" / f"{name}.{ext}"
            assert path.stat().st_size > 0, path
        assert f"](figures/{name}.png)" in text
    assert set(figs) == set(FIGURES)
    assert str(run.parent) not in text  # no absolute paths
    for heading in ("## Results", "## Tokenizer floor", "## Speed-ups", "## What temperature means"):
        assert heading in text
    finals = [fid_of("purr", s, 40) for s in (0, 1)]
    purr_row = next(line for line in text.splitlines() if line.startswith("| tiny/1 | purr |"))
    assert f"| {np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f} |" in purr_row
    assert "| 1k | 3G |" in purr_row  # params, FLOPs/step
    assert "softmax temperature" in text and "source-noise scale" in text
    floor_section = text.split("## Tokenizer floor")[1].split("##")[0]
    assert "| 1.50 |" in floor_section
    other = text.split("### Other evaluations")[1].split("##")[0]  # the CFG cell, in neither curve nor sweep
    halves = [fid_of("purr", s, 40) / 2 for s in (0, 1)]
    assert (
        f"| tiny/1 | purr | 40 | 0.9 | 16 | 1.5 | 100 | 2 | {np.mean(halves):.2f} ± {np.std(halves, ddof=1):.2f} |"
        in other
    )


def test_convergence_figures_plot_the_seed_means(built):
    _, out, figs = built
    for x, name in (
        ("step", "fid_vs_iterations"),
        ("train_flops", "fid_vs_flops"),
        ("train_wall_s", "fid_vs_wall_clock"),
    ):
        lines = lines_by_label(figs[name].axes[0])
        tidy = pd.read_csv(out / "figures" / f"{name}.csv")
        for method in ("purr", "cfm"):
            label = next(k for k in lines if k.startswith(method + " ("))
            assert ("τ=0.9" in label) == (method == "purr")  # purr's cheap cell, not the sweep
            xs, ys = lines[label]
            np.testing.assert_allclose(ys, mean_over_seeds(method, STEPS))
            per_step = {
                "step": STEPS,
                "train_flops": [s * FLOPS_PER_STEP[method] for s in STEPS],
                "train_wall_s": [s * 0.5 * 1.5 for s in STEPS],
            }[x]  # mean of 0.5 s and 1.0 s per step
            np.testing.assert_allclose(xs, per_step)
            sub = tidy[tidy["variant"] == method]
            np.testing.assert_allclose(sub["mean"], ys)
            np.testing.assert_allclose(
                sub["std"], [np.std([fid_of(method, s, st) for s in (0, 1)], ddof=1) for st in STEPS]
            )
        floor = [y for k, (_, y) in lines.items() if k.startswith("tokenizer")]
        assert floor and floor[0][0] == FLOOR["fid"]


def test_class_accuracy_figure_and_tables(built):
    """The class-accuracy curve is the seed mean of the cheap cell's column, with the floor's as the
    ceiling line; the results table shows its final value and the floor table the ceiling."""
    _, out, figs = built
    lines = lines_by_label(figs["class_accuracy_vs_iterations"].axes[0])
    for method in ("purr", "cfm"):
        xs, ys = lines[method]
        np.testing.assert_allclose(xs, STEPS)
        np.testing.assert_allclose(ys, [np.mean([class_accuracy_of(method, s, st) for s in (0, 1)]) for st in STEPS])
    assert lines["tokenizer reconstructions (ceiling)"][1][0] == FLOOR["class_accuracy"]
    text = (out / "report.md").read_text()
    finals = [class_accuracy_of("purr", s, 40) for s in (0, 1)]
    purr_row = next(line for line in text.splitlines() if line.startswith("| tiny/1 | purr |"))
    assert f"| {np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f} |" in purr_row
    assert "| 0.970 |" in text.split("## Tokenizer floor")[1].split("##")[0]


def test_runs_without_class_accuracy_report_a_dash_and_no_figure(tmp_path, captured):
    """Results from before the metric (or from an extractor without class logits) still report."""
    run = make_run(tmp_path, floor={k: v for k, v in FLOOR.items() if k != "class_accuracy"})
    frame = pd.read_csv(run / "metrics.csv")
    frame.drop(columns="class_accuracy").to_csv(run / "metrics.csv", index=False)
    text = (reports.build_report([run]) / "report.md").read_text()
    assert "class_accuracy_vs_iterations" not in captured
    header = next(line for line in text.splitlines() if line.startswith("| backbone | variant | seeds"))
    purr_row = next(line for line in text.splitlines() if line.startswith("| tiny/1 | purr |"))
    column = [c.strip() for c in header.split("|")].index("final class acc.")
    assert [c.strip() for c in purr_row.split("|")][column] == "-"
    assert "TensorFlow's 2015 ImageNet label map" in text


def test_temperature_figure_and_legend(built):
    _, _, figs = built
    lines = lines_by_label(figs["fid_vs_temperature"].axes[0])
    xs, ys = lines["purr: softmax temperature tau on the code posterior"]
    np.testing.assert_allclose(xs, [0.8, 0.9, 1.2])  # the cheap cell (τ 0.9) is part of the sweep
    np.testing.assert_allclose(ys, [np.mean([fid_of("purr", s, 40, t) for s in (0, 1)]) for t in xs])
    xs, _ = lines["cfm: source-noise scale: z0 ~ N(0, tau^2 I)"]
    np.testing.assert_allclose(xs, [0.8, 1.0, 1.2])


def test_sample_grid_figure_composes_pngs_low_to_high(built):
    run, _, figs = built
    fig = figs["samples_purr"]
    taus = [float(ax.get_title().split("=")[1]) for ax in fig.axes]
    assert taus == [0.8, 0.9, 1.2]
    full_rows = GRID_SAMPLES // CLASSES  # 24 samples in rows of 10: the part-filled third row is cut
    for ax, tau in zip(fig.axes, taus):
        shown = ax.get_images()[0].get_array()
        on_disk = matplotlib.image.imread(run / "samples/purr/seed0" / f"step000000040_steps8_tau{tau:g}_cfg1_n100.png")
        np.testing.assert_array_equal(np.asarray(shown), on_disk[: 2 + full_rows * (TILE + 2)])
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in range(CLASSES)]
        np.testing.assert_allclose(ax.get_xticks(), 2 + np.arange(CLASSES) * (TILE + 2) + (TILE - 1) / 2)
        assert ax.get_xlabel() == "class"
    assert "seed 0" in fig.get_suptitle()


def test_grid_of_another_layout_is_shown_whole_and_unlabelled(tmp_path, captured):
    """A folder of layout 1 (no sidecars): a grid whose pixel size does not fit the config's
    tiling gets no layout, and its panel shows it whole and unlabelled; the others are cut."""
    run = make_run(tmp_path)
    odd = run / "samples/purr/seed0/step000000040_steps8_tau0.8_cfg1_n100.png"
    matplotlib.image.imsave(odd, np.linspace(0, 1, 6 * 8).reshape(6, 8), cmap="gray")
    grids = sample_grids(load_runs([run]), "tiny/1", "purr", 40, 8, 1.0, 100)
    assert list(grids["temperature"]) == [0.8, 0.9, 1.2] and grids["layout"][0] is None
    F.plot_samples(grids, "t", tmp_path, "odd")
    whole, cut = captured["odd"].axes[:2]
    assert whole.get_images()[0].get_array().shape[:2] == (6, 8) and not whole.get_xticklabels()
    assert cut.get_images()[0].get_array().shape[0] == 2 + GRID_SAMPLES // CLASSES * (TILE + 2)
    assert [t.get_text() for t in cut.get_xticklabels()] == [str(c) for c in range(CLASSES)]


def test_sidecars_give_what_a_grid_shows_and_its_layout(tmp_path, captured):
    """A folder of the current layout: each grid's cell and tiling come from its sidecar, not from
    its file name or the config (here both would mislead: a renamed PNG, a wrong image size)."""
    run = make_run(tmp_path, sidecars=True)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["data"]["image_size"] = 3 * TILE
    (run / "manifest.json").write_text(json.dumps(manifest))
    grid = run / "samples/purr/seed0/step000000040_steps8_tau1.2_cfg1_n100.png"
    record = json.loads(sidecar_path(grid).read_text())
    grid.rename(grid.with_name("renamed.png"))
    sidecar_path(grid).write_text(json.dumps({**record, "image": "renamed.png"}))
    grids = sample_grids(load_runs([run]), "tiny/1", "purr", 40, 8, 1.0, 100)
    assert list(grids["temperature"]) == [0.8, 0.9, 1.2] and grids["path"][2].name == "renamed.png"
    assert all(
        layout == GridLayout.tiled([i % CLASSES for i in range(GRID_SAMPLES)], CLASSES, TILE)
        for layout in grids["layout"]
    )
    F.plot_samples(grids, "t", tmp_path, "sidecars")
    for ax in captured["sidecars"].axes:
        assert ax.get_images()[0].get_array().shape[0] == 2 + GRID_SAMPLES // CLASSES * (TILE + 2)
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in range(CLASSES)]
        np.testing.assert_allclose(ax.get_xticks(), 2 + np.arange(CLASSES) * (TILE + 2) + (TILE - 1) / 2)


def test_fid_vs_steps_figure(built):
    _, out, figs = built
    lines = lines_by_label(figs["fid_vs_steps"].axes[0])
    for method in ("purr", "cfm"):
        label = next(k for k in lines if k.startswith(method + " ("))
        assert f"step {STEPS[-1]}" in label and ("τ=0.9" in label) == (method == "purr")
        xs, ys = lines[label]
        np.testing.assert_allclose(xs, [4, 8, 16])  # the CFG 1.5 cell at 16 steps is another cell
        final = np.mean([fid_of(method, s, STEPS[-1]) for s in (0, 1)])
        np.testing.assert_allclose(ys, final * (8 / xs) ** 0.5)
    tidy = pd.read_csv(out / "figures" / "fid_vs_steps.csv")
    assert list(tidy["steps"][tidy["variant"] == "cfm"]) == [4, 8, 16] and (tidy["n_seeds"] == 2).all()


def test_entropy_and_train_log_figures(built):
    _, _, figs = built
    lines = lines_by_label(figs["entropy_vs_t"].axes[0])
    t, h = lines["τ = 1.2"]
    np.testing.assert_allclose(t, np.arange(8) / 8)
    np.testing.assert_allclose(h, math.log(K) * (1 - t) * 1.2 * 1.05)  # mean over seeds of (1, 1.1)
    np.testing.assert_allclose(lines[f"log K (K = {K})"][1], math.log(K))
    loss_ax, lse_ax = figs["train_loss"].axes
    steps, loss = lines_by_label(loss_ax)["purr"]
    np.testing.assert_allclose(loss, 1.0 / steps + 0.005)
    assert set(lines_by_label(lse_ax)) == {"purr"}  # cfm logs no logsumexp


# ----------------------------------------------------------------------------- speed-ups


def test_first_reach_interpolates_log_log():
    steps = np.array([4.0, 16.0, 64.0])
    reach = first_reach(steps, 100.0 / steps, 10.0)  # FID = 100 / step reaches 10 at step 10
    assert reach.kind == EXACT and reach.x == pytest.approx(10.0)
    assert first_reach(steps, 100.0 / steps, 50.0) == first_reach(steps, 100.0 / steps, 25.0)  # at_least 4
    assert first_reach(steps, 100.0 / steps, 25.0).kind == AT_LEAST
    assert first_reach(steps, 100.0 / steps, 1.0) == type(reach)(64.0, NOT_REACHED)
    with pytest.raises(ValueError, match="increasing"):
        first_reach(np.array([2.0, 1.0]), np.array([3.0, 2.0]), 1.0)


def test_speedup_known_answer_and_bounds():
    steps = np.array([4.0, 16.0, 40.0])
    purr = (100.0 / steps)[None]
    base = np.array([[80.0, 30.0, 10.0]])  # final FID 10 at step 40
    s = speedup(steps, purr, steps, base)
    assert (s.kind, s.target, s.baseline_x) == (EXACT, 10.0, 40.0)
    assert s.ratio == pytest.approx(4.0) and format_speedup(s) == "4.00x"
    early = speedup(steps, (1.0 / steps)[None], steps, base)
    assert early.kind == AT_LEAST and format_speedup(early) == ">=10.00x"  # 40 / first checkpoint 4
    never = speedup(steps, np.full((1, 3), 50.0), steps, base)
    assert never.kind == NOT_REACHED and format_speedup(never) == "not reached (<1.00x)"
    flops = speedup(steps * 3.0, purr, steps * 2.0, base)  # per-FLOP: purr costs 1.5x per step
    assert flops.ratio == pytest.approx(4.0 / 1.5)


def test_bootstrap_interval_holds_estimate_deterministically():
    steps = np.array([5.0, 10.0, 20.0, 40.0])
    rng = np.random.default_rng(1)
    purr = 100.0 / steps * rng.uniform(0.8, 1.2, size=(4, 1))
    base = 400.0 / steps * rng.uniform(0.8, 1.2, size=(3, 1))
    point = speedup(steps, purr, steps, base)
    lo, hi = bootstrap_interval(steps, purr, steps, base)
    assert lo.ratio <= point.ratio <= hi.ratio and lo.ratio < hi.ratio
    again = bootstrap_interval(steps, purr, steps, base)
    assert (again[0].ratio, again[1].ratio) == (lo.ratio, hi.ratio)
    assert bootstrap_interval(steps, purr[:1], steps, base[:1]) is None
    assert format_interval(None) == "n/a (1 seed)"


def table_rows(text: str, prefix: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith(prefix)]


def test_speedup_table_in_report(built):
    _, out, _ = built
    text = (out / "report.md").read_text()
    default = text.split("### At each method's default temperature")[1].split("###")[0]
    quarter, half, full = table_rows(default, "| tiny/1 | purr | cfm |")
    assert [r[3:6] for r in (quarter, half, full)] == [["0.9/1", "2/2", b] for b in ("1/4", "1/2", "all")]
    # all: target = mean final cfm FID = 240/40 * 1.05 = 6.3; purr's mean curve 105/step reaches it
    # at step 16.67 (log-log interpolation is exact for power laws) -> 40 / 16.67 = 2.4x; per FLOP
    # purr costs 1.5x more per step -> 1.6x
    assert full[6:10] == ["6.30", "40", "17", "2.40x"] and full[11] == "1.60x"
    # bootstrap: each method's two seeds give resampled scales (1, 1.05, 1.1) with probabilities
    # (1/4, 1/2, 1/4); the ratio is 40 * 6 * b / (100 * p); the extreme combinations have
    # probability 1/16 > 2.5%, so the 95% interval is [40*6/110, 40*6.6/100]
    assert full[10] == f"[{40 * 6 / 110:.2f}, {40 * 6.6 / 100:.2f}]"
    assert full[12] == f"[{40 * 6 / 110 / 1.5:.2f}, {40 * 6.6 / 100 / 1.5:.2f}]"
    # 1/2: cfm's FID at step 20 is 12.6; purr's first checkpoint (10.5 at step 10) already beats it
    assert half[6:10] == ["12.60", "20", "<=10", ">=2.00x"]
    assert quarter[6:10] == ["25.20", "10", "<=10", ">=1.00x"]
    assert "No method has a curve along training at a temperature other than its default" in text


def test_speedups_at_each_methods_best_temperature(tmp_path):
    """With an ``at: every`` cell at τ 0.8, cfm is best there (its FID halves) and purr stays at 0.9:
    the best-temperature table compares purr at 0.9 with cfm at 0.8."""
    run = make_run(tmp_path, seeds=(0, 1), every_taus=(0.8,))
    metrics = pd.read_csv(run / "metrics.csv")
    metrics.assign(class_accuracy=0.9).to_csv(run / "metrics.csv", index=False)  # a column reports do not use
    results = load_runs([run])
    cells = cheap_cells(results).set_index("variant")
    assert cells.loc["cfm", "temperature"] == 1.0  # the default-temperature cell stays the cheap cell
    text = markdown_of([run])
    default = text.split("### At each method's default temperature")[1].split("###")[0]
    assert table_rows(default, "| tiny/1 | purr | cfm |")[2][9] == "2.40x"
    best = text.split("### At each method's best temperature")[1].split("##")[0]
    (*_, full) = table_rows(best, "| tiny/1 | purr | cfm |")
    # cfm at 0.8: 120/step * (1 + 0.1 seed), final mean 3.15; purr's 105/step reaches it at 33.3 -> 1.2x
    assert full[3:5] == ["0.9/0.8", "0.9/0.8"] and full[6] == "all"
    assert full[7:11] == ["3.15", "40", "33", "1.20x"]


def test_value_at_and_speedup_at_a_budget_fraction():
    steps = np.array([4.0, 16.0, 64.0])
    assert value_at(steps, 100.0 / steps, 8.0) == pytest.approx(12.5)  # power law between checkpoints
    assert value_at(steps, 100.0 / steps, 16.0) == 100.0 / 16.0
    with pytest.raises(ValueError, match="outside"):
        value_at(steps, 100.0 / steps, 2.0)
    s = speedup(steps, (100.0 / steps)[None], steps, (400.0 / steps)[None], fraction=0.5)
    assert (s.baseline_x, s.kind) == (32.0, EXACT) and s.target == pytest.approx(12.5)  # 400 / 32, reached at 8
    assert s.ratio == pytest.approx(4.0)


def test_bootstrap_matches_scipy_percentile_interval():
    """scipy.stats.bootstrap (percentile, unpaired) resamples the same way; it differs only by
    Monte-Carlo error and by interpolating between resamples (why ours is kept: reports.speedup)."""
    stats = pytest.importorskip("scipy.stats")
    steps = np.array([10.0, 20.0, 40.0, 80.0, 160.0])
    rng = np.random.default_rng(3)
    purr = 100.0 / steps * rng.uniform(0.7, 1.3, size=(6, 1))
    base = 300.0 / steps * rng.uniform(0.7, 1.3, size=(6, 1))
    lo, hi = bootstrap_interval(steps, purr, steps, base)
    assert lo.kind == hi.kind == EXACT
    theirs = stats.bootstrap(
        (np.arange(6), np.arange(6)),
        lambda p, b: speedup(steps, purr[p.astype(int)], steps, base[b.astype(int)]).ratio,
        paired=False,
        vectorized=False,
        method="percentile",
        n_resamples=2000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert lo.ratio == pytest.approx(theirs.low, rel=0.03) and hi.ratio == pytest.approx(theirs.high, rel=0.03)


# ----------------------------------------------------------------------------- merging


def test_merging_two_seed_folders_gives_the_union(tmp_path):
    a, b = make_run(tmp_path, "a", seeds=(0,)), make_run(tmp_path, "b", seeds=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicates, no notes
        merged = load_runs([a, b])
    single = [load_runs([d]) for d in (a, b)]
    assert len(merged.metrics) == sum(len(r.metrics) for r in single)
    assert set(merged.metrics["variant"]) == {"purr", "cfm"}  # train.seed differs: still one variant each
    assert sorted(merged.metrics["seed"].unique()) == [0, 1]
    assert len(merged.traces) == sum(len(r.traces) for r in single)
    assert len(merged.train_logs) == sum(len(r.train_logs) for r in single)
    assert len(merged.floors) == 1 and merged.floors["runs"].iloc[0] == "a, b"  # identical floor taken once
    both = make_run(tmp_path, "both", seeds=(0, 1))
    pd.testing.assert_frame_equal(
        convergence(merged).drop(columns=["run", "source"]),
        convergence(load_runs([both])).drop(columns=["run", "source"]),
    )


def markdown_of(run_dirs) -> str:
    """report.md's text without drawing figures."""
    results = load_runs(run_dirs)
    return report_text(results, convergence(results), sweeps(results), {}, [])


def test_duplicate_cells_keep_the_first_folder_and_warn(tmp_path):
    a = make_run(tmp_path, "a", seeds=(0,))
    b = make_run(tmp_path, "b", seeds=(0,), fid=lambda m, s, st, tau=None: 2 * fid_of(m, s, st, tau))
    with pytest.warns(UserWarning, match="duplicate"):
        merged = load_runs([a, b])
    assert len(merged.metrics) == len(load_runs([a]).metrics)
    assert (merged.metrics["run"] == "a").all()
    assert any("metrics.csv" in n and "fid values differ" in n for n in merged.notes)
    assert "train_log.csv: duplicate log of purr seed 0 in run(s) 'b'; kept run 'a' (given first)" in merged.notes
    with pytest.warns(UserWarning):
        text = markdown_of([a, b])
    notes = text.split("## Merge notes")[1]
    assert "duplicate rows of run 'a' (given first)" in notes


def test_different_floors_are_each_shown(tmp_path):
    a = make_run(tmp_path, "a", seeds=(0,))
    b = make_run(tmp_path, "b", seeds=(1,), floor={**FLOOR, "fid": 2.5})
    merged = load_runs([a, b])
    assert sorted(merged.floors["fid"]) == [1.5, 2.5]
    floor_section = markdown_of([a, b]).split("## Tokenizer floor")[1].split("##")[0]
    assert "| 1.50 |" in floor_section and "| 2.50 |" in floor_section


def test_zloss_runs_become_labelled_variants(tmp_path, captured):
    on = make_run(tmp_path, "zloss-on", methods=("purr",), z_loss=1e-5)
    off = make_run(tmp_path, "zloss-off", methods=("purr",), z_loss=0.0)
    results = load_runs([on, off])
    assert set(results.metrics["variant"]) == {"purr (z_loss=1e-05)", "purr (z_loss=0)"}
    assert len(results.metrics) == 2 * len(load_runs([on]).metrics)  # same cells, different variants: both kept
    F.plot_train_logs(results.train_logs, tmp_path / "figs")
    lse = lines_by_label(captured["train_loss"].axes[1])
    assert set(lse) == {"purr (z_loss=1e-05)", "purr (z_loss=0)"}
    np.testing.assert_allclose(lse["purr (z_loss=0)"][1], np.arange(5, 45, 5) * 0.1)
    np.testing.assert_allclose(lse["purr (z_loss=1e-05)"][1], np.arange(5, 45, 5) * 0.01)
    text = markdown_of([on, off])
    assert "| tiny/1 | purr (z_loss=0) |" in text and "No Purrception variant and baseline share" in text


def test_different_recipes_are_compared_only_within_recipe(tmp_path):
    fast = make_run(tmp_path, "fast", lr=1e-3)
    slow = make_run(tmp_path, "slow", lr=1e-4, fid=lambda m, s, st, tau=None: 3 * fid_of(m, s, st, tau))
    zoff = make_run(tmp_path, "zoff", methods=("purr",), z_loss=0.0, lr=1e-3)
    results = load_runs([fast, slow, zoff])
    assert set(results.variants["variant"]) == {
        "purr (z_loss=1e-05, train.lr=0.001)",
        "purr (z_loss=1e-05, train.lr=0.0001)",
        "purr (z_loss=0, train.lr=0.001)",
        "cfm (train.lr=0.001)",
        "cfm (train.lr=0.0001)",
    }
    table = speedup_table(convergence(results), results.variants)
    pairs = set(zip(table["Purrception"], table["baseline"]))
    assert pairs == {
        ("purr (z_loss=1e-05, train.lr=0.001)", "cfm (train.lr=0.001)"),
        ("purr (z_loss=0, train.lr=0.001)", "cfm (train.lr=0.001)"),
        ("purr (z_loss=1e-05, train.lr=0.0001)", "cfm (train.lr=0.0001)"),
    }
    assert set(table.loc[table["budget"] == "all", "speed-up (iters)"]) == {"2.40x"}  # both recipes scale alike
    text = markdown_of([fast, slow, zoff])
    assert "| tiny/1 | purr (z_loss=0, train.lr=0.001) | zoff | z_loss=0, train.lr=0.001 |" in text


def test_long_recipes_get_short_names(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["config"]["tokenizer"]["vqvae"].update(codebook_size=64, code_dim=8, channels=32)
    (b / "manifest.json").write_text(json.dumps(manifest))
    results = load_runs([a, b])
    assert set(results.variants["variant"]) == {
        "purr (recipe 1)",
        "purr (recipe 2)",
        "cfm (recipe 1)",
        "cfm (recipe 2)",
    }
    row = results.variants.set_index("variant").loc["cfm (recipe 2)"]
    assert row["recipe"] == "tokenizer.vqvae.channels=32, tokenizer.vqvae.code_dim=8, tokenizer.vqvae.codebook_size=64"
    assert row["runs"] == "b"


# ----------------------------------------------------------------------------- reproducibility, errors


def test_regenerating_gives_identical_report(built, tmp_path):
    run, out, _ = built
    assert reports_main([str(run), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again/report.md").read_bytes() == (out / "report.md").read_bytes()
    for name in ("fid_vs_iterations.pdf", "fid_vs_iterations.csv", "samples_purr.png"):
        assert (tmp_path / "again/figures" / name).read_bytes() == (out / "figures" / name).read_bytes()


def test_cli_errors(run_dir, tmp_path, capsys):
    assert reports_main([str(run_dir), "--out", str(tmp_path / "cli"), "--step", "20"]) == 2
    assert "no temperature sweep at step 20; steps with a sweep: 40" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()  # checked before drawing anything
    assert reports_main([str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_malformed_inputs_name_the_file(tmp_path):
    run = make_run(tmp_path, seeds=(0,))
    (run / "metrics.csv").write_text("method,seed\npurr,0\n")
    with pytest.raises(RunFolderError, match=r"metrics.csv: missing column\(s\) step"):
        load_runs([run])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        load_runs([tmp_path / "empty"])


def test_cheap_cell_is_the_configured_every_cell(run_dir):
    cells = cheap_cells(load_runs([run_dir])).set_index("variant")
    assert cells.loc["purr", "temperature"] == 0.9 and cells.loc["cfm", "temperature"] == 1.0
    assert (cells["points"] == 2 * len(STEPS)).all()
    rows = sweeps(load_runs([run_dir]))
    assert set(rows["sweep_step"]) == {40} and set(rows.loc[rows["variant"] == "purr", "temperature"]) == {
        0.8,
        0.9,
        1.2,
    }


def test_row_keys_match_benchmarks_results():
    from benchmarks.storage import results

    assert CELL_KEY == results.CELL_KEY
    assert TRACE_KEY == results.TRACE_KEY


@pytest.mark.parametrize(
    "name,runs",
    [
        ("default", ["default"]),
        ("zloss", ["default", "zloss-off"]),
        ("convergence", ["convergence"]),
        ("samplers", ["samplers"]),
        ("fashion", ["fashion"]),
        ("fashion-convergence", ["fashion-convergence"]),
    ],
)
def test_committed_reference_reports_regenerate_byte_for_byte(tmp_path, name, runs):
    """``python -m reports results/... --out reports/<name>`` on the committed reference results
    rebuilds the committed report: report.md and every figure's data CSV byte for byte."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    reports_main([*(str(root / "results" / r) for r in runs), "--out", str(tmp_path)])
    assert_same_report(tmp_path, root / "reports" / name)


def test_best_within_nfe_picks_lowest_fid_that_fits():
    from reports.tables import best_within_nfe_table

    rows = pd.DataFrame(
        [
            {
                "backbone": "b",
                "variant": "cfm",
                "seed": s,
                "sampler": sampler,
                "steps": steps,
                "nfe": nfe,
                "fid": fid + s,
            }
            for s in (0, 1)
            for sampler, steps, nfe, fid in [
                ("euler", 8, 8, 30.0),
                ("euler", 16, 16, 20.0),
                ("heun", 4, 7, 25.0),
                ("heun", 8, 15, 12.0),
                ("dopri5:rtol=0.01,atol=0.01", 1, 40 + 2 * s, 10.0),
            ]
        ]
    )
    table = best_within_nfe_table(rows, budgets=(4, 8, 16, 32, 64))
    got = {r["NFE budget"]: (r["sampler"], r["NFE"], r["FID"], r["Euler's best"]) for _, r in table.iterrows()}
    assert got == {
        4: ("-", "-", "-", "-"),
        8: ("heun", "7", "25.50 ± 0.71", "30.50 ± 0.71 (8 steps)"),
        16: ("heun", "15", "12.50 ± 0.71", "20.50 ± 0.71 (16 steps)"),
        32: ("heun", "15", "12.50 ± 0.71", "20.50 ± 0.71 (16 steps)"),
        64: ("dopri5:rtol=0.01,atol=0.01", "41", "10.50 ± 0.71", "20.50 ± 0.71 (16 steps)"),  # NFE: mean over seeds
    }
