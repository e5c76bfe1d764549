"""The benchmark on the real single-machine SLURM cluster: `python -m benchmarks.run --launcher slurm
--wait` submits one job array, a task preempted mid-training checkpoints, is requeued and resumes,
and every job's results land, complete and without duplicates, in the one run folder. Also: a
two-task SLURM job forms its torch process group from the SLURM environment alone.

The job function of the second test is pickled by value, so job processes never import this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
import submitit

from benchmarks.core.config import load_config
from benchmarks.core.distributed import rendezvous_port
from benchmarks.launching.jobs import latents_for, make_evaluator
from benchmarks.launching.launch import read_events
from benchmarks.storage.manifest import read_manifest
from benchmarks.storage.results import cell_key

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("purr", "cfm", "dfm")
ITERATIONS, CHECKPOINT_EVERY = (
    400,
    200,
)  # a wide window after the first evaluation: the preemption must land in training
OVERRIDES = [f"train.iterations={ITERATIONS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "eval.temperatures=[]"]
RUN_TIMEOUT_S = 420.0
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD", "SIGNALING"}
"""States of a run still going (a run that ended by requeue reads REQUEUED)."""


def _wait_for(predicate, timeout: float, what, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll predicate() until true; fail after `timeout` s, or if `proc` exits first, naming `what`
    (a str or a callable giving one) with the tail of `log`."""
    start = time.monotonic()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            what = what() if callable(what) else what
            pytest.fail(f"benchmarks.run exited ({proc.returncode}) while waiting for {what}:\n{_tail(log)}")
        if time.monotonic() - start > timeout:
            what = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{_tail(log)}")
        time.sleep(0.2)


def _tail(path: Path | None, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path is not None and path.exists() else ""


def _steps_evaluated(run: Path) -> pd.DataFrame:
    path = run / "metrics.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["method", "step"])


def _runs(cluster, array_id: str, rows: int) -> dict[str, list[str]]:
    """Task id -> states of its runs, in order (sacct -D lists requeued runs too), once accounting
    lists `rows` ended runs of the array: it lags a moment behind the jobs (more so for the ids of
    single array tasks, hence the query by array)."""
    found: list[tuple[str, str]] = []

    def ended() -> bool:
        out = cluster.run("sacct", "-X", "-D", "-n", "-P", "-j", array_id, "-o", "JobID,State").stdout
        found[:] = [tuple(line.split("|")) for line in out.splitlines() if line.strip()]
        return len(found) == rows and not ACTIVE & {state for _, state in found}

    _wait_for(ended, 90, lambda: f"sacct to list {rows} ended runs of array {array_id} (last: {found})")
    runs: dict[str, list[str]] = {}
    for task, state in found:
        runs.setdefault(task, []).append(state)
    return runs


@pytest.mark.timeout(900)  # a cold project cache adds minutes (tokenizer and feature extractor training)
def test_smoke_benchmark_array_survives_a_preemption(slurm_cluster, slurm_timings, shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("VQFLOW_CACHE", str(shared_cache))
    cfg = load_config("smoke", OVERRIDES)
    started = time.monotonic()
    make_evaluator(cfg, latents_for(cfg, progress=False), tmp_path / "warm-up", progress=False).reference()
    slurm_timings["benchmark: cache warm-up (tokenizer, codes, reference statistics)"] = time.monotonic() - started

    run, log = tmp_path / "run", tmp_path / "benchmarks.run.log"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--config",
        "smoke",
        "--methods",
        ",".join(METHODS),
        "--launcher",
        "slurm",
        "--out",
        str(run),
        "--wait",
        "--wait-timeout",
        str(RUN_TIMEOUT_S),
        "--no-progress",
        "--set",
        *OVERRIDES,
        f"launcher.partition={slurm_cluster.partition}",
        "launcher.cpus_per_task=1",
        "launcher.mem_gb=2",
        "launcher.timeout_min=60",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # preempt the first job whose first (scheduled) evaluation is in: it is training again
        _wait_for(
            lambda: CHECKPOINT_EVERY in set(_steps_evaluated(run)["step"]),
            RUN_TIMEOUT_S,
            "a job's first evaluation",
            proc,
            log,
        )
        method = _steps_evaluated(run).query("step == @CHECKPOINT_EVERY")["method"].iloc[0]
        (launch,) = read_manifest(run)["launches"].values()
        job_id = launch["jobs"][f"{method}/seed0"]
        signalled_at = time.time()
        slurm_cluster.run("scancel", "--signal=USR2", job_id)  # what SLURM sends before it preempts
        # the same command again while the array runs must not submit a second array
        again = subprocess.run(
            [a for a in argv if a != "--wait"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if again.returncode == 0:  # a loaded machine: the array (requeue included) ended before it looked
            assert "nothing new evaluated" in again.stderr, again.stderr[-2000:]
        else:
            assert again.returncode == 1 and "still queued or running" in again.stderr, again.stderr[-2000:]
        proc.wait(timeout=RUN_TIMEOUT_S + 60)
        assert len(read_manifest(run)["launches"]) == 1, "the second command submitted another array"
    finally:
        if proc.poll() is None:
            proc.kill()
            arrays = list(read_manifest(run).get("launches", {}))
            if arrays:
                slurm_cluster.run("scancel", *arrays, check=False)
    wall = time.monotonic() - started
    assert proc.returncode == 0, _tail(log)
    assert f"submitted {len(METHODS)} job(s) as SLURM job array" in log.read_text()

    # the preempted task: checkpointed, requeued by submitit, resumed from its checkpoint, completed
    events = read_events(run, method, 0)
    assert [e["event"] for e in events] == ["start", "requeue", "start", "done"], events
    preempted_at = events[1]["checkpoint_step"]
    assert CHECKPOINT_EVERY <= preempted_at < ITERATIONS
    assert events[2]["from_step"] == preempted_at and events[2]["restart"] == 1
    runs = _runs(slurm_cluster, job_id.split("_")[0], len(METHODS) + 1)
    assert runs == {
        task: ["REQUEUED", "COMPLETED"] if task == job_id else ["COMPLETED"] for task in launch["jobs"].values()
    }

    # every job's results, merged in one folder: complete, no duplicates, scheduled steps only
    metrics = _steps_evaluated(run)
    keys = [cell_key(row) for row in metrics.to_dict("records")]
    assert len(keys) == len(set(keys)), "duplicate evaluation rows"
    assert sorted(map(tuple, metrics[["method", "step"]].values.tolist())) == sorted(
        (m, step) for m in METHODS for step in (CHECKPOINT_EVERY, ITERATIONS)
    )
    jobs = read_manifest(run)["jobs"]
    for m in METHODS:
        assert jobs[f"{m}/seed0"]["step"] == ITERATIONS
        assert [p.name for p in (run / m / "seed0" / "checkpoints").glob("*.pt")] == [f"step_{ITERATIONS:09d}.pt"]
        assert list(pd.read_csv(run / m / "seed0" / "train_log.csv")["step"]) == list(range(5, ITERATIONS + 1, 5))
        if m != method:
            assert [e["event"] for e in read_events(run, m, 0)] == ["start", "done"]

    # rerunning the command on the finished run submits nothing
    again = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert again.returncode == 0 and "every job of this run has already finished" in again.stdout, again.stderr

    slurm_timings["benchmark: array of 3 (submit to all done, incl. 1 requeue)"] = wall
    slurm_timings["benchmark: USR2 to requeue (checkpoint saved)"] = events[1]["time"] - signalled_at
    slurm_timings["benchmark: requeue to resumed job start"] = events[2]["time"] - events[1]["time"]


def _all_reduce_ranks() -> tuple[int, int, float, str]:
    """Inside each task of a 2-task job: join the gloo group from the SLURM environment and sum the ranks."""
    import torch
    import torch.distributed as torch_dist

    from benchmarks.core.distributed import DistEnv

    dist = DistEnv.from_environment()
    dist.init_process_group(torch.device("cpu"))
    try:
        total = torch.tensor([float(dist.rank)])
        torch_dist.all_reduce(total)
        return dist.rank, dist.world_size, float(total.item()), os.environ["MASTER_PORT"]
    finally:
        torch_dist.destroy_process_group()


def test_two_task_job_forms_gloo_group_from_slurm_env(slurm_cluster, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(
        slurm_partition=slurm_cluster.partition,
        timeout_min=60,
        nodes=1,
        tasks_per_node=2,
        cpus_per_task=1,
        mem_gb=2,
        slurm_setup=[f"export PYTHONPATH={ROOT}"],
    )
    job = executor.submit(_all_reduce_ranks)
    _wait_for(lambda: job.done(force_check=True), 120, f"2-task job {job.job_id}")
    results = job.results()
    port = str(rendezvous_port(job.job_id))
    assert results == [(0, 2, 1.0, port), (1, 2, 1.0, port)], json.dumps(results)
