"""Sample a run's checkpoint outside training and score the export: the round trip reproduces the
run's own metrics.csv row, in both output formats; bad arguments are refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
METRICS = ["fid", "kid_mean", "precision", "recall", "isc", "class_accuracy"]


def cli(module: str, *args: str, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VQFLOW_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def parse_scores(stdout: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in stdout.strip().splitlines()[-1].split())


@pytest.mark.slow
def test_sample_then_score_reproduces_the_cell(run_cli, shared_cache, tmp_path):
    run = tmp_path / "run"
    run_cli(
        "--config",
        "smoke",
        "--methods",
        "purr",
        "--out",
        str(run),
        "--no-progress",
        "--set",
        "train.iterations=20",
        "train.checkpoint_every=10",
        "eval.temperatures=[]",
    )
    row = pd.read_csv(run / "metrics.csv").query("step == 20").iloc[0]
    sample = [
        "--run",
        str(run),
        "--method",
        "purr",
        "--seed",
        "0",
        "--num-samples",
        "100",
        "--steps",
        "8",
        "--temperature",
        "0.9",
        "--batch-size",
        "30",
        "--part-size",
        "40",
        "--no-progress",
    ]

    npz = tmp_path / "purr.npz"
    cli("benchmarks.sample", *sample, "--out", str(npz), cache=shared_cache)
    with np.load(npz) as data:
        assert data["arr_0"].shape == (100, 32, 32, 3) and data["arr_0"].dtype == np.uint8
        assert list(data["arr_1"]) == [i % 10 for i in range(100)]
    assert not npz.with_name("purr.npz.parts").exists()
    scores = parse_scores(
        cli(
            "benchmarks.score",
            str(npz),
            "--run",
            str(run),
            "--no-progress",
            "--append",
            str(tmp_path / "scores.csv"),
            cache=shared_cache,
        ).stdout
    )
    assert scores["feature_extractor"] == row["feature_extractor"] and scores["ref_stats"] == row["ref_stats"]
    for metric in METRICS:
        assert float(scores[metric]) == pytest.approx(row[metric], rel=1e-4, abs=1e-6), metric
    assert len(pd.read_csv(tmp_path / "scores.csv")) == 1

    # resumable: kill an export after its first part, mark that part, rerun: the part is kept
    resumed = tmp_path / "resumed.npz"
    part = tmp_path / "resumed.npz.parts" / "part-00000.npz"
    env = {**os.environ, "VQFLOW_CACHE": str(shared_cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sample", *sample, "--out", str(resumed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not part.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    assert part.exists() and not resumed.exists()
    with np.load(part) as data:
        kept = {"images": 255 - data["images"], "labels": data["labels"], "plan": data["plan"]}  # same plan
    with open(part, "wb") as f:
        np.savez(f, **kept)
    cli("benchmarks.sample", *sample, "--out", str(resumed), cache=shared_cache)
    with np.load(resumed) as got, np.load(npz) as want:
        assert np.array_equal(got["arr_0"][:40], 255 - want["arr_0"][:40])  # the kept part, not resampled
        assert np.array_equal(got["arr_0"][40:], want["arr_0"][40:]) and np.array_equal(got["arr_1"], want["arr_1"])

    folder = tmp_path / "pngs"
    cli("benchmarks.sample", *sample, "--out", str(folder), cache=shared_cache)
    assert sorted(p.name for p in folder.iterdir()) == [str(c) for c in range(10)]
    scores = parse_scores(
        cli("benchmarks.score", str(folder), "--run", str(run), "--no-progress", cache=shared_cache).stdout
    )
    assert float(scores["fid"]) == pytest.approx(row["fid"], rel=1e-4)

    ref = tmp_path / "ref.npz"
    cli("benchmarks.score", "--run", str(run), "--export-reference", str(ref), "--no-progress", cache=shared_cache)
    scores = parse_scores(
        cli(
            "benchmarks.score",
            str(npz),
            "--extractor",
            "mnist-cnn",
            "--reference",
            str(ref),
            "--no-progress",
            cache=shared_cache,
        ).stdout
    )
    with np.load(ref) as data:
        assert set(data.files) == {"mu", "sigma"} and data["sigma"].shape == (128, 128)
    assert float(scores["fid"]) == pytest.approx(row["fid"], rel=1e-4)  # FID needs only mu and sigma

    refused = cli(
        "benchmarks.sample",
        *sample[:6],
        "--step",
        "10",
        "--num-samples",
        "10",
        "--out",
        str(tmp_path / "x.npz"),
        cache=shared_cache,
        check=False,
    )
    assert refused.returncode == 2 and "checkpoints at steps [20]" in refused.stderr
    refused = cli(
        "benchmarks.sample",
        "--run",
        str(run),
        "--method",
        "cfm",
        "--num-samples",
        "10",
        "--out",
        str(tmp_path / "x.npz"),
        cache=shared_cache,
        check=False,
    )
    assert refused.returncode == 2 and "methods with either: purr" in refused.stderr
