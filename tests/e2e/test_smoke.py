"""End to end: the real CLI on the smoke config, evaluation included; results idempotence;
a plugin registered from outside ``methods/`` runs through the same pipeline."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from benchmarks.evaluation.metrics import metric_columns
from benchmarks.storage.results import CELL_KEY, metrics_csv_columns
from benchmarks.storage.run_dir import sidecar_path

ALL = "purr,cfm,cfm-endpoint,dfm,dfm-uniform"


@pytest.mark.slow
def test_smoke_run_writes_complete_results(run_cli, tmp_path):
    out = tmp_path / "smoke"
    proc = run_cli("--config", "smoke", "--methods", ALL, "--out", str(out), "--no-progress")
    assert "run folder" in proc.stdout
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == metrics_csv_columns(metric_columns())
    assert metrics["isc_std"].map(math.isfinite).all()
    assert set(metrics["method"]) == set(ALL.split(","))
    assert metrics["fid"].map(math.isfinite).all()
    assert not metrics.duplicated(CELL_KEY).any()
    # every method: the cheap cell at both checkpoints, the sweep at the last one
    per_method = metrics.groupby("method").size()
    assert (per_method == 4).all(), per_method  # steps 20, 40 at tau default; sweep 0.8, 1.0 at 40 (purr: 0.9 + 2)
    purr = metrics[metrics["method"] == "purr"]
    assert purr["entropy"].notna().all() and (metrics[metrics["method"] == "cfm"]["entropy"].isna()).all()
    assert (metrics["nfe"] == metrics["steps"]).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["jobs"]) == {f"{m}/seed0" for m in ALL.split(",")}
    assert {"config", "versions", "machine", "timings", "latents"} <= set(manifest)
    assert metrics["class_accuracy"].between(0, 1).all()  # mnist-cnn: every cell has one
    floor = json.loads((out / "tokenizer_floor.json").read_text())
    assert 0.5 < floor["class_accuracy"] <= 1  # the reconstructions' accuracy: the ceiling
    grids = list((out / "samples").rglob("*.png"))
    assert len(grids) == len(metrics)
    assert manifest["run_dir_layout"] == 2 and all(sidecar_path(grid).exists() for grid in grids)
    for method in ALL.split(","):
        log = pd.read_csv(out / method / "seed0" / "train_log.csv")
        assert log["step"].iloc[-1] == 40


@pytest.mark.slow
def test_interrupted_evaluation_resumes_without_duplicates(run_cli, shared_cache, tmp_path):
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    args = ["--config", "smoke", "--methods", "purr,dfm", "--no-progress"]
    reference = tmp_path / "uninterrupted"
    run_cli(*args, "--out", str(reference))

    out = tmp_path / "interrupted"
    env = {**os.environ, "VQFLOW_CACHE": str(shared_cache), "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", *args, "--out", str(out)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once the first evaluation row exists (mid-evaluation)
        if (out / "metrics.csv").exists() and len(pd.read_csv(out / "metrics.csv")) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = len(pd.read_csv(out / "metrics.csv"))
    run_cli(*args, "--out", str(out))

    done = pd.read_csv(out / "metrics.csv")
    expected = pd.read_csv(reference / "metrics.csv")
    assert partial < len(expected)
    assert not done.duplicated(CELL_KEY).any()
    key = ["method", "seed", "step", "steps", "temperature"]
    assert sorted(map(tuple, done[key].values.tolist())) == sorted(map(tuple, expected[key].values.tolist()))
    # the same samples: sampling seeds are fixed per (seed, step, cell), so FIDs match exactly
    merged = done.merge(expected, on=key, suffixes=("", "_ref"))
    assert (merged["fid"] - merged["fid_ref"]).abs().max() < 1e-6


@pytest.mark.slow
def test_plugin_registered_outside_methods_runs_through_smoke(run_cli, tmp_path):
    out = tmp_path / "plugin"
    run_cli(
        "--config",
        "smoke",
        "--plugins",
        "examples.lognormal_cfm",
        "--methods",
        "cfm-lognormal",
        "--set",
        "methods.cfm-lognormal.std=0.5",
        "--out",
        str(out),
        "--no-progress",
    )
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["method"]) == {"cfm-lognormal"} and metrics["fid"].map(math.isfinite).all()


@pytest.mark.slow
def test_diverged_job_stops_and_the_others_finish(run_cli, tmp_path):
    """purr-diverging's loss is infinite from step 25 (the smoke run checkpoints at 20 and 40): it
    stops with an error naming method, seed and step, keeps its step-20 checkpoint, writes no
    metrics after it; cfm in the same command finishes; the command exits with status 1."""
    out = tmp_path / "diverged"
    proc = run_cli(
        "--config",
        "smoke",
        "--plugins",
        "tests.support.divergent",
        "--methods",
        "purr-diverging,cfm",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "eval.temperatures=[]",
        check=False,
        timeout=1500,
    )
    assert proc.returncode == 1, proc.stderr
    assert "purr-diverging seed 0 diverged: the loss or gradient norm is not finite at step 25" in proc.stderr
    assert "1 job(s) diverged: purr-diverging seed 0 (step 25)" in proc.stderr
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics.loc[metrics["method"] == "purr-diverging", "step"]) == {20}
    assert set(metrics.loc[metrics["method"] == "cfm", "step"]) == {20, 40}  # the healthy job finished
    assert metrics["fid"].map(math.isfinite).all()
    checkpoints = sorted(p.name for p in (out / "purr-diverging" / "seed0" / "checkpoints").glob("*.pt"))
    assert checkpoints == ["step_000000020.pt"]
    log = pd.read_csv(out / "purr-diverging" / "seed0" / "train_log.csv")
    assert log["step"].max() == 20 and log["loss"].map(math.isfinite).all()
