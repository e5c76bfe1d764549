"""What an operator sees: plain stage lines with --no-progress, the final summary table, what a
rerun skipped, timings that add up across reruns, and the feature extractor's progress bar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VQFLOW_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--config",
            "smoke",
            "--methods",
            "purr,cfm",
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def two_runs(shared_cache, tmp_path_factory):
    """The smoke benchmark (purr, cfm) run twice on one folder (the first with TensorBoard logging):
    the second run has nothing to do."""
    out = tmp_path_factory.mktemp("operator") / "smoke"
    first = run_smoke(out, shared_cache, "--tensorboard")
    manifest_after_first = json.loads((out / "manifest.json").read_text())
    second = run_smoke(out, shared_cache)
    return out, first, manifest_after_first, second


STAGES = [
    r"tokenizer: train VQ-VAE.*: (done in |skipped)",
    r"tokenizer: encode .*: (done in|skipped)",
    r"feature extractor: train mnist-cnn.*: (done in|skipped)",
    r"reference statistics: mnist5k-\w+ \(5000 images, mnist-cnn\): (done in|skipped)",
    r"job 1 of 2: purr seed 0: started",
    r"job 1 of 2: purr seed 0: done in \d",
    r"job 2 of 2: cfm seed 0: done in \d",
    r"report: done in",
]


@pytest.mark.slow
def test_no_progress_prints_stage_lines_and_the_summary(two_runs):
    out, first, _, _ = two_runs
    for pattern in STAGES:
        assert re.search(r"^\d\d:\d\d:\d\d " + pattern, first.stderr, re.M), (pattern, first.stderr)
    assert "\r" not in first.stderr, "no progress bars with --no-progress"
    assert re.search(r"evaluation: 8 new cells, 8 in metrics.csv", first.stderr)
    table = first.stdout.split("final results")[1]
    metrics = pd.read_csv(out / "metrics.csv")
    for method in ("purr", "cfm"):
        fid = metrics[(metrics["method"] == method) & (metrics["step"] == 40)]["fid"]
        assert re.search(rf"^\s*{method}\s+1\s+40\s+[\d.]+", table, re.M), table
        assert any(f"{value:.2f}" in table for value in fid), (method, table)
    assert table.index("purr") < table.index("cfm")
    assert f"manifest.json      {(out / 'manifest.json').resolve()}" in first.stdout


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_says_what_it_skipped(two_runs):
    _, _, _, second = two_runs
    for line in (
        "tokenizer: train VQ-VAE: skipped, trained VQ-VAE in the cache",
        "tokenizer: encode images to codes: skipped, codes in the cache",
        "purr seed 0: training skipped, already at step 40 of 40",
        "cfm seed 0: training skipped, already at step 40 of 40",
        "evaluation: skipped, all 8 cells were already in metrics.csv; nothing new evaluated",
    ):
        assert line in second.stderr, (line, second.stderr)


@pytest.mark.slow
def test_timings_add_up_across_reruns(two_runs):
    out, _, first, _ = two_runs
    second = json.loads((out / "manifest.json").read_text())
    timings = second["timings"]
    assert len(timings["invocations"]) == 2
    assert timings["total_s"] == pytest.approx(sum(i["total_s"] for i in timings["invocations"]), abs=0.02)
    assert timings["total_s"] >= first["timings"]["total_s"], "the rerun must not overwrite the total"
    assert timings["latents"]["total_s"] >= first["timings"]["latents"]["total_s"]
    for key in ("purr/seed0", "cfm/seed0"):
        job, before = second["jobs"][key], first["jobs"][key]
        assert [(i["from_step"], i["to_step"]) for i in job["invocations"]] == [(0, 40), (40, 40)]
        assert job["eval_s"] == pytest.approx(sum(i["eval_s"] for i in job["invocations"]), abs=0.02)
        assert job["eval_s"] >= before["eval_s"] > 1.0, "evaluating 4 cells takes seconds; a rerun adds to it"


@pytest.mark.slow
def test_summary_shows_class_accuracy_when_metrics_have_it(two_runs, tmp_path):
    import shutil

    from benchmarks.run import summary_table

    out = two_runs[0]
    metrics = pd.read_csv(out / "metrics.csv")
    last = metrics[metrics["step"] == metrics["step"].max()]
    table = summary_table(out)
    assert "class accuracy" in table
    for method in ("purr", "cfm"):  # the value of one of the method's cells at the last checkpoint
        shown = re.search(rf"^\s*{method}\s+1\s+40\s+[\d.]+\s+([\d.]+)\s*$", table, re.M)
        assert shown, table
        cells = last[last["method"] == method]["class_accuracy"]
        assert any(abs(float(shown.group(1)) - a) <= 0.005 for a in cells), (shown.group(1), list(cells))
    older = tmp_path / "before-the-metric"  # results written before class accuracy existed
    shutil.copytree(out, older, ignore=shutil.ignore_patterns("checkpoints", "samples", "report"))
    metrics.drop(columns="class_accuracy").to_csv(older / "metrics.csv", index=False)
    assert "class accuracy" not in summary_table(older)


@pytest.mark.slow
def test_tensorboard_holds_losses_lr_fids_and_sample_grids(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = two_runs[0]
    metrics = pd.read_csv(out / "metrics.csv")
    for method in ("purr", "cfm"):
        events = EventAccumulator(str(out / "tensorboard" / f"{method}-seed0"), size_guidance={"images": 0}).Reload()
        tags = events.Tags()
        log = pd.read_csv(out / method / "seed0" / "train_log.csv")
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == log["step"].tolist()
        assert [e.value for e in loss] == pytest.approx(log["loss"].tolist(), rel=1e-6)
        assert {"train/grad_norm", "train/lr"} <= set(tags["scalars"])
        assert all(e.value == pytest.approx(1e-3) for e in events.Scalars("train/lr"))
        rows = metrics[metrics["method"] == method]
        fids = sorted(
            (e.step, e.value) for tag in tags["scalars"] if tag.startswith("fid/") for e in events.Scalars(tag)
        )
        expected = sorted(zip(rows["step"], rows["fid"]))
        assert [step for step, _ in fids] == [step for step, _ in expected]
        assert [fid for _, fid in fids] == pytest.approx([fid for _, fid in expected], rel=1e-6)
        assert len([e for tag in tags["images"] for e in events.Images(tag)]) == len(rows)


def test_feature_extractor_training_shows_a_progress_bar(capsys):
    from benchmarks.evaluation.mnist_cnn import TrainConfig, train_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(100, 1, 32, 32), dtype=np.uint8)
    labels = np.arange(100) % 10
    train_classifier(images, labels, TrainConfig(epochs=1, batch_size=50), progress=True)
    assert "train mnist-cnn feature extractor" in capsys.readouterr().err
    train_classifier(images, labels, TrainConfig(epochs=1, batch_size=50), progress=False)
    assert "feature extractor" not in capsys.readouterr().err
