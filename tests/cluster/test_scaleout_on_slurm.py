"""Scale-out on the real SLURM daemons: a job over two nodes (two slurmd on this machine,
partition ``multi``) that is preempted, requeued and resumes across the nodes with the results of
one process; and evaluation cells added to a finished run, evaluated by a resubmitted job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.launching.launch import read_events
from benchmarks.storage.manifest import read_manifest
from benchmarks.storage.results import CELL_KEY
from tests.support.ranks import RANK_METRICS, TINY_EVAL

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MULTI = "multi"


def _cli(cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "VQFLOW_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "benchmarks.run", "--config", "smoke", "--methods", "purr", "--no-progress"]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _slurm(partition: str, *overrides: str) -> list[str]:
    return [
        f"launcher.partition={partition}",
        "launcher.cpus_per_task=1",
        "launcher.mem_gb=2",
        "launcher.timeout_min=60",
        *overrides,
    ]


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.timeout(900)
def test_added_eval_cells_are_evaluated_by_slurm_jobs(slurm_cluster, shared_cache, tmp_path):
    """A finished smoke run; the same command with one more ``eval.cells`` entry resubmits the
    job, which skips training and writes rows for the new cell only."""
    run = tmp_path / "run"
    base = ["train.iterations=20", "train.checkpoint_every=10", *TINY_EVAL]
    launch = ["--launcher", "slurm", "--wait", "--out", str(run), "--set"]
    _ok(_cli(shared_cache, *launch, *base, *_slurm(slurm_cluster.partition)))
    before = pd.read_csv(run / "metrics.csv")
    assert list(before["steps"]) == [8, 8]

    cells = "eval.cells=[{steps: 8, at: every}, {steps: 4, at: last}]"
    started = time.monotonic()
    again = _ok(_cli(shared_cache, *launch, *base, cells, *_slurm(slurm_cluster.partition)))
    assert "purr/seed0 finished training; submitting it again for 1 new evaluation cell(s)" in again.stdout
    assert "submitted 1 job(s) as SLURM job array" in again.stdout, again.stdout
    after = pd.read_csv(run / "metrics.csv")
    assert len(after) == 3 and not after.duplicated(CELL_KEY).any()
    new = after.iloc[2]
    assert (new["step"], new["steps"]) == (20, 4)
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    assert [e["event"] for e in read_events(run, "purr", 0)] == ["start", "done", "start", "done"]
    log = pd.read_csv(run / "purr" / "seed0" / "train_log.csv")
    assert list(log["step"]).count(20) == 1, "training must not run again"
    print(f"\nresubmitted evaluation-only job: {time.monotonic() - started:.1f} s (submit to done)")

    third = _ok(_cli(shared_cache, *launch, *base, cells, *_slurm(slurm_cluster.partition)))
    assert "every job of this run has already finished" in third.stdout


def _nodes_of(cluster, job_id: str) -> list[str]:
    out = cluster.run("sacct", "-X", "-D", "-n", "-P", "-j", job_id, "-o", "NodeList").stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.timeout(900)
def test_two_node_job_resumes_across_nodes(slurm_cluster, shared_cache, tmp_path):
    """``launcher.nodes=2``: one rank on each node daemon (gloo); a USR2 mid-training makes the
    job checkpoint, requeue and resume on both nodes; the metrics are the 1-process ones."""
    nodes = slurm_cluster.run("sinfo", "-h", "-p", MULTI, "-o", "%D", check=False).stdout.strip()
    if nodes != "2":
        pytest.skip(f"the cluster has no 2-node partition {MULTI!r} (a cluster started by .ci/slurm/cluster.py has)")
    base = ["train.iterations=400", "train.checkpoint_every=200", *TINY_EVAL]
    one, run = tmp_path / "one", tmp_path / "run"
    _ok(_cli(shared_cache, "--out", str(one), "--set", *base))

    env = {**os.environ, "VQFLOW_CACHE": str(shared_cache), "PYTHONPATH": str(ROOT)}
    args = ["--launcher", "slurm", "--wait", "--out", str(run), "--set", *base, *_slurm(MULTI, "launcher.nodes=2")]
    command = [sys.executable, "-m", "benchmarks.run", "--config", "smoke", "--methods", "purr", "--no-progress"]
    log = tmp_path / "run.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([*command, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not ((run / "metrics.csv").exists() and len(pd.read_csv(run / "metrics.csv")) >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        job_id = read_manifest(run)["launches"].popitem()[1]["jobs"]["purr/seed0"]
        slurm_cluster.run("scancel", "--signal=USR2", "--full", job_id)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.monotonic() - started
    assert proc.returncode == 0, log.read_text()[-3000:]

    events = read_events(run, "purr", 0)
    assert [e["event"] for e in events] == ["start", "requeue", "start", "done"], events
    assert 200 <= events[1]["checkpoint_step"] < 400 and events[2]["from_step"] == events[1]["checkpoint_step"]
    assert all(nodes == "localhost,node2" for nodes in _nodes_of(slurm_cluster, job_id)), _nodes_of(
        slurm_cluster, job_id
    )
    assert read_manifest(run)["jobs"]["purr/seed0"]["world_size"] == 2
    want, got = pd.read_csv(one / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    assert list(got["step"]) == list(want["step"]) == [200, 400]
    for column in RANK_METRICS:
        pd.testing.assert_series_equal(got[column], want[column], rtol=1e-3, atol=1e-4, check_exact=False)
    print(f"\n2-node job with one requeue: {wall:.1f} s (submit to done)")
