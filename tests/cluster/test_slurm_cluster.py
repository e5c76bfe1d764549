"""Jobs through submitit on the real single-machine SLURM cluster: arrays, failures, requeue.

The job functions below are pickled by value (cloudpickle), so the job processes never import
this test module: the jobs work whatever directory pytest runs from.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

pytestmark = pytest.mark.cluster
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_TIMEOUT_S = 90.0  # any single wait for a job; a healthy cluster needs a few seconds
REQUEUE_TIMEOUT_S = 120.0  # a requeued job waits cred_expire (10 s) + a scheduler pass before it restarts
STEP_S = 0.4  # one step of the resumable counter
STEPS = 10


# ------------------------------------------------------------------------------------------
# job functions (run inside SLURM jobs)


def square_in_array(x: int) -> tuple[int, int, str, str]:
    """x**2, with the array task index, array job id and job id SLURM gave this task."""
    env = os.environ
    return x * x, int(env["SLURM_ARRAY_TASK_ID"]), env["SLURM_ARRAY_JOB_ID"], env["SLURM_JOB_ID"]


def die_hard(code: int) -> None:
    """Exit at once, without Python cleanup: submitit writes no result file."""
    os._exit(code)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


class ResumableCounter(submitit.helpers.Checkpointable):
    """Counts to `steps`, one step every `step_s` seconds, logging to the `progress` file.

    Lines: "start <n> restart=<SLURM_RESTART_COUNT> t=<unix time>" when a run begins at count n,
    "step <n>" after each step, "checkpoint <n>" when submitit checkpoints (then requeues) it.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, progress: str, steps: int, step_s: float) -> tuple[int, int]:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        _append(progress, f"start {self.count} restart={restarts} t={time.time()}")
        while self.count < steps:
            time.sleep(step_s)
            self.count += 1
            _append(progress, f"step {self.count}")
        return self.count, restarts

    def checkpoint(self, progress: str, steps: int, step_s: float) -> submitit.helpers.DelayedSubmission:
        _append(progress, f"checkpoint {self.count}")
        return super().checkpoint(progress, steps, step_s)


def sleep_then_return(seconds: float, value: str) -> str:
    time.sleep(seconds)
    return value


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


# ------------------------------------------------------------------------------------------
# helpers (run in the test process)


def _executor(folder: Path, partition: str, **params) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    # timeout_min >= 50: submitit counts a signal before min(0.8 x limit, limit - 10 min) as a
    # preemption; with shorter limits every preemption would count as a timeout.
    executor.update_parameters(slurm_partition=partition, timeout_min=60, cpus_per_task=1, **params)
    return executor


def _describe(jobs) -> str:
    lines = []
    for job in jobs:
        stderr = job.stderr() or ""
        lines.append(
            f"job {job.job_id}: state {job.watcher.get_state(job.job_id, mode='force')}\n"
            f"  stderr tail: {stderr[-1500:]}"
        )
    return "\n".join(lines)


def _wait_done(jobs, timeout: float) -> float:
    """Wait until every job is done per submitit (result file or final sacct state); returns seconds waited."""
    start = time.monotonic()
    while not all(job.done(force_check=True) for job in jobs):
        if time.monotonic() - start > timeout:
            pytest.fail(f"jobs not done after {timeout:.0f} s:\n{_describe(jobs)}")
        time.sleep(0.5)
    return time.monotonic() - start


def _wait_for(predicate, timeout: float, what, jobs=()) -> None:
    """Poll predicate() until true; fail after `timeout` s with `what` (a str, or a callable giving one)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            what = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{_describe(jobs)}")
        time.sleep(0.2)


ACTIVE_STATES = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
}


def _sacct(cluster, job_id: str, rows: int, *, all_runs: bool = False) -> list[tuple[str, str, str]]:
    """(JobID, State, ExitCode) of the `rows` allocations of job_id: array tasks, and with all_runs
    also the runs that ended by requeue (state REQUEUED). Waits until accounting lists `rows`
    ended allocations: slurmdbd records job starts and ends asynchronously, so sacct can lag
    behind submitit (which sees the result file) by a moment."""
    argv = ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode", *(["-D"] if all_runs else [])]
    found: list[tuple[str, ...]] = []

    def ended() -> bool:
        found[:] = [tuple(line.split("|")) for line in cluster.run(*argv).stdout.splitlines() if line]
        return len(found) == rows and all(state not in ACTIVE_STATES for _, state, _ in found)

    _wait_for(ended, JOB_TIMEOUT_S, lambda: f"sacct to list {rows} ended allocations of job {job_id} (last: {found})")
    return found


def _progress(path: Path) -> list[tuple[str, int, str]]:
    """Lines of a ResumableCounter progress file as (kind, count, rest)."""
    parsed = []
    for line in path.read_text().splitlines():
        kind, count, *rest = line.split(" ")
        parsed.append((kind, int(count), " ".join(rest)))
    return parsed


def _steps_done(path: Path) -> int:
    return sum(kind == "step" for kind, _, _ in _progress(path)) if path.exists() else 0


def _check_resumed(progress: Path, result: tuple[int, int], signalled_at: float) -> float:
    """Assert the counter, signalled after 3 steps, ran twice and resumed from its checkpoint;
    returns seconds from the signal to the start of the resumed run."""
    lines = _progress(progress)
    starts = [(i, count, rest) for i, (kind, count, rest) in enumerate(lines) if kind == "start"]
    checkpoints = [count for kind, count, _ in lines if kind == "checkpoint"]
    assert len(starts) == 2, f"expected one start and one resume, got:\n{progress.read_text()}"
    assert len(checkpoints) == 1, progress.read_text()
    (_, first_count, first_rest), (resume_at, resumed_count, resumed_rest) = starts
    assert first_count == 0 and first_rest.startswith("restart=0 ")
    assert resumed_count == checkpoints[0] >= 3, "the requeued run must start from the checkpointed count"
    assert resumed_rest.startswith("restart=1 "), f"SLURM_RESTART_COUNT of the resumed run: {resumed_rest}"
    after = [count for kind, count, _ in lines[resume_at + 1 :] if kind == "step"]
    assert after == list(range(resumed_count + 1, STEPS + 1)), "the resumed run continues where it stopped"
    assert result == (STEPS, 1)
    return float(resumed_rest.split(" t=")[1]) - signalled_at


# ------------------------------------------------------------------------------------------
# tests


def test_job_array_results_and_accounting(slurm_cluster, slurm_timings, tmp_path):
    executor = _executor(tmp_path / "logs", slurm_cluster.partition)
    jobs = executor.map_array(square_in_array, [1, 2, 3])
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(3)]

    waited = _wait_done(jobs, JOB_TIMEOUT_S)
    slurm_timings["job array of 3: submit to all done"] = waited
    results = [job.result() for job in jobs]
    assert [result[:3] for result in results] == [(1, 0, array_id), (4, 1, array_id), (9, 2, array_id)]
    assert len({result[3] for result in results}) == 3, "each array task runs as its own SLURM job"
    states = {job_id: state for job_id, state, _ in _sacct(slurm_cluster, array_id, 3)}
    assert states == {f"{array_id}_{i}": "COMPLETED" for i in range(3)}


def test_failed_jobs_are_reported_within_seconds(slurm_cluster, slurm_timings, tmp_path):
    executor = _executor(tmp_path / "logs", slurm_cluster.partition)
    hard = executor.submit(die_hard, 3)
    raising = executor.submit(raise_value_error, "bad input 17")

    waited = _wait_done([hard, raising], JOB_TIMEOUT_S)
    slurm_timings["two failing jobs: submit to done"] = waited
    assert _sacct(slurm_cluster, hard.job_id, 1) == [(hard.job_id, "FAILED", "3:0")]
    assert _sacct(slurm_cluster, raising.job_id, 1)[0][1] == "FAILED"
    # submitit waits _results_timeout_s (15 s) for a missing result file in case a shared filesystem
    # lags; here the job ran on this machine, so the file is either there or never coming.
    hard._results_timeout_s = 1
    with pytest.raises(UncompletedJobError, match="FAILED"):
        hard.result()
    with pytest.raises(FailedJobError, match="bad input 17"):
        raising.result()


@pytest.mark.slow
def test_checkpointable_requeued_by_usr2_resumes(slurm_cluster, slurm_timings, tmp_path):
    progress = tmp_path / "progress.txt"
    executor = _executor(tmp_path / "logs", slurm_cluster.partition)
    job = executor.submit(ResumableCounter(), str(progress), STEPS, STEP_S)
    _wait_for(lambda: _steps_done(progress) >= 3, JOB_TIMEOUT_S, "3 steps of the counter", [job])

    signalled_at = time.time()
    slurm_cluster.run("scancel", "--signal=USR2", job.job_id)  # what SLURM sends on preemption
    _wait_done([job], REQUEUE_TIMEOUT_S)
    resume_s = _check_resumed(progress, job.result(), signalled_at)
    slurm_timings["USR2 to resumed run (requeue)"] = resume_s
    runs = _sacct(slurm_cluster, job.job_id, 2, all_runs=True)
    assert [state for _, state, _ in runs] == ["REQUEUED", "COMPLETED"]


@pytest.mark.slow
def test_preemption_by_urgent_partition_requeues_and_resumes(slurm_cluster, slurm_timings, tmp_path):
    if slurm_cluster.urgent_partition is None:
        pytest.skip(f"cluster {slurm_cluster.conf} has no partition that preempts {slurm_cluster.partition}")
    progress = tmp_path / "progress.txt"
    whole_node = {"cpus_per_task": slurm_cluster.cpus}  # so the urgent job can only run by preemption
    executor = _executor(tmp_path / "logs", slurm_cluster.partition)
    executor.update_parameters(**whole_node)
    job = executor.submit(ResumableCounter(), str(progress), STEPS, STEP_S)
    _wait_for(lambda: _steps_done(progress) >= 3, JOB_TIMEOUT_S, "3 steps of the counter", [job])

    urgent_ex = _executor(tmp_path / "logs", slurm_cluster.urgent_partition)
    urgent_ex.update_parameters(**whole_node)
    signalled_at = time.time()
    urgent = urgent_ex.submit(sleep_then_return, 1.0, "urgent done")
    _wait_done([job, urgent], REQUEUE_TIMEOUT_S)
    assert urgent.result() == "urgent done"
    resume_s = _check_resumed(progress, job.result(), signalled_at)
    slurm_timings["preemption (urgent submit) to resumed run"] = resume_s
    runs = _sacct(slurm_cluster, job.job_id, 2, all_runs=True)
    assert [state for _, state, _ in runs] == ["REQUEUED", "COMPLETED"]
