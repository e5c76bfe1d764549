"""Several ranks on one machine without GPUs (gloo): ``torchrun -m benchmarks.run`` walks the
jobs with all ranks and matches a 1-process run; submitit-local with ``launcher.gpus_per_job=2``
runs a 2-rank job; a ``--no-progress`` run's logs hold no torch-fidelity prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.launching.launch import read_events
from tests.support.ranks import RANK_METRICS, TINY_EVAL

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY = [
    "--config",
    "smoke",
    "--methods",
    "purr",
    "--no-progress",
    "--set",
    "train.iterations=20",
    "train.checkpoint_every=10",
    *TINY_EVAL,
]
FIDELITY_PRINTS = ("Creating feature extractor", "Processing samples")


def _torchrun(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VQFLOW_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "benchmarks.run", *args]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def _same_metrics(one: Path, two: Path) -> None:
    want, got = pd.read_csv(one / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    assert list(got["step"]) == list(want["step"]) == [10, 20]
    for column in RANK_METRICS:
        pd.testing.assert_series_equal(got[column], want[column], rtol=1e-3, atol=1e-4, check_exact=False)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(run_cli, shared_cache, tmp_path):
    """Both ranks walk the job list together (DDP training, sharded evaluation); rank 0 alone
    logs, locks and writes: one start and one done event, the single-process metrics."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(*TINY, "--out", str(one))
    proc = _torchrun(shared_cache, *TINY, "--out", str(two))
    assert proc.returncode == 0, proc.stderr[-4000:]
    _same_metrics(one, two)
    assert [e["event"] for e in read_events(two, "purr", 0)] == ["start", "done"]
    assert proc.stderr.count("job 1 of 1: purr seed 0: started") == 1, "only rank 0 prints stage lines"
    assert proc.stdout.count("run folder:") == 1
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["jobs"]["purr/seed0"]["world_size"] == 2
    floors = [json.loads((run / "tokenizer_floor.json").read_text()) for run in (one, two)]
    assert floors[0]["fid"] == pytest.approx(floors[1]["fid"], rel=1e-6)
    assert not any(text in proc.stderr for text in FIDELITY_PRINTS)


@pytest.mark.slow
def test_no_progress_logs_have_no_fidelity_prints(run_cli, tmp_path):
    """A --no-progress run through submitit-local, 2 gloo ranks per job (launcher.gpus_per_job on
    a machine without GPUs): the command's stderr and the job logs hold no torch-fidelity prints."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(*TINY, "--out", str(one))
    proc = run_cli(*TINY, "launcher.gpus_per_job=2", "--launcher", "submitit-local", "--wait", "--out", str(two))
    _same_metrics(one, two)
    logs = sorted((two / "submitit").glob("*_log.err"))
    assert len(logs) == 2, logs  # one per rank
    for text in (proc.stderr, *(log.read_text() for log in logs)):
        assert not any(line in text for line in FIDELITY_PRINTS), text[-3000:]
    assert "job purr seed 0: started" in logs[0].read_text() + logs[1].read_text()
