"""Launchers: where the (method, seed) jobs of a run execute.

``local``           one job after another in this process, sharing the prepared latent space.
``submitit-local``  one subprocess per job (submitit's local executor), all started at once: the
                    cluster code path (checkpoint on the preemption signal, requeue) on one machine.
``slurm``           one SLURM job array with a task per (method, seed). A task spans
                    ``launcher.nodes`` nodes x ``launcher.gpus_per_job`` GPUs with DDP (one
                    process per GPU), or one process per node on CPUs.

Under torchrun the ``local`` launcher runs in every rank: the ranks walk the job list together.

Every job writes into the same run folder: ``metrics.csv`` rows are lock-appended, the manifest is
lock-merged, and each job owns ``<method>/seed<k>/`` (checkpoints, ``train_log.csv``, and
``job_events.jsonl``: one JSON line per start, requeue and finish, written by rank 0). submitit's
pickles and logs go to ``<run>/submitit/``. Submitting returns at once after printing the job ids
(also recorded in the manifest under ``launches``); ``wait=True`` follows the jobs to the end.
Jobs whose last event says they finished, and whose last checkpoint has every evaluation cell of
the current config in ``metrics.csv``, are not submitted again (``finished``), and nothing is submitted while
jobs of an earlier launch of the run are still queued or running (two jobs would train one
(method, seed) into the same checkpoints).

Each job opens the latent space from the project cache (``$VQFLOW_CACHE`` or the XDG default,
which must be on a filesystem the nodes share; its resolved path is exported to the jobs) and
prepares it if missing, under a file lock, so concurrent jobs prepare it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import submitit
import torch
from submitit.core.utils import UncompletedJobError
from tqdm.auto import tqdm

from benchmarks.core import logs
from benchmarks.core.config import BenchmarkConfig, LauncherConfig, from_dict
from benchmarks.core.distributed import PREEMPTION, DistEnv
from benchmarks.launching.jobs import make_evaluator, prepare_recorded_latents, run_job
from benchmarks.storage.cache import cache_root
from benchmarks.storage.manifest import read_manifest, update_manifest
from benchmarks.storage.run_dir import RunDir
from benchmarks.training.trainer import TrainingDiverged

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WAIT_TIMEOUT_S = 48 * 3600.0
POLL_S = 5.0
"""How often --wait looks for the jobs' result files."""
ACCOUNTING_REFRESH_S = 30.0
"""How often --wait asks SLURM's accounting for the states of all jobs (one sacct call)."""
JOB_TQDM_MININTERVAL_S = 30
"""Progress bars in job logs (files, not terminals) redraw at most this often."""


class LaunchError(RuntimeError):
    """Jobs failed, or did not finish within the wait timeout; the message lists them."""


def launch(
    cfg: BenchmarkConfig,
    methods: list[str],
    seeds: list[int],
    run_dir: Path,
    *,
    progress: bool = True,
    wait: bool = False,
    wait_timeout: float | None = None,
    tensorboard: bool = False,
) -> bool:
    """Run or submit every (method, seed) job of ``cfg.launcher.kind``. Returns True when all jobs
    have finished (always for ``local``; with ``wait`` for the others), False when submitted jobs
    are still running. Raises LaunchError if a job failed or ``wait_timeout`` seconds (default
    DEFAULT_WAIT_TIMEOUT_S) passed. ``tensorboard``: jobs also write TensorBoard event files."""
    if cfg.launcher.kind == "local":
        run_local(cfg, methods, seeds, run_dir, progress=progress, tensorboard=tensorboard)
        return True
    jobs = submit(cfg, methods, seeds, run_dir, tensorboard=tensorboard, progress=progress)
    if not jobs:
        print("every job of this run has already finished")
        return True
    if not wait:
        return False
    follow(jobs, DEFAULT_WAIT_TIMEOUT_S if wait_timeout is None else wait_timeout, progress=progress)
    return True


class JobsDiverged(LaunchError):
    """Some jobs of a local run diverged (the others finished); the message names them."""


def run_local(
    cfg: BenchmarkConfig,
    methods: list[str],
    seeds: list[int],
    run_dir: Path,
    *,
    progress: bool,
    tensorboard: bool = False,
) -> None:
    """Run every job in this process. A job that diverges stops (``TrainingDiverged``) and the
    others go on; then ``JobsDiverged`` names the diverged ones.

    Under torchrun (``DistEnv`` of several ranks) every rank calls this with the same job list and
    the ranks walk it together: each job trains with DDP and evaluates sharded over the ranks.
    Rank 0 alone holds the job locks and writes the job events (the trainer and evaluator write
    their files from rank 0 too)."""
    dist = DistEnv.from_environment()
    main = dist.is_main
    diverged = []
    with contextlib.ExitStack() as held:
        for method in methods:
            for seed in seeds if main else ():
                held.enter_context(job_lock(run_dir, method, seed))
        latents = prepare_recorded_latents(cfg, run_dir, progress=progress and main, record=main)
        evaluator = make_evaluator(cfg, latents, run_dir, progress and main, dist)
        jobs = [(method, seed) for method in methods for seed in seeds]
        for k, (method, seed) in enumerate(jobs, 1):
            with logs.stage(f"job {k} of {len(jobs)}: {method} seed {seed}", part="jobs"):
                if main:
                    from_step = RunDir(run_dir).job(method, seed).newest_step()
                    record_event(run_dir, method, seed, "start", from_step=from_step)
                try:
                    summary = run_job(
                        cfg,
                        method,
                        seed,
                        run_dir,
                        latents=latents,
                        evaluator=evaluator,
                        progress=progress,
                        tensorboard=tensorboard,
                    )
                except TrainingDiverged as e:
                    if main:
                        print(f"error: {e}", file=sys.stderr)
                        record_event(run_dir, method, seed, "diverged", step=e.step)
                    diverged.append(f"{method} seed {seed} (step {e.step})")
                    continue
                if main:
                    record_event(run_dir, method, seed, "done", step=summary["step"])
    if diverged:
        raise JobsDiverged(f"{len(diverged)} job(s) diverged: {', '.join(diverged)}; the other jobs finished")


class JobBusyError(LaunchError):
    """Another process holds the lock of a job (it is training or evaluating it now)."""


@contextlib.contextmanager
def job_lock(run_dir: str | Path, method: str, seed: int) -> Iterator[None]:
    """Hold ``<job>/job.lock`` (an exclusive ``flock``, released by the OS when the holder dies)
    while this process runs the job; raise JobBusyError at once if another process holds it,
    so two commands on one run folder never train or log one (method, seed) twice."""
    job = RunDir(run_dir).job(method, seed)
    job.path.mkdir(parents=True, exist_ok=True)
    with open(job.lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise JobBusyError(
                f"{job.key} of {run_dir} is being run by {holder}; wait for it to finish "
                "(then rerun to continue), or use another --out"
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the job


class BenchmarkJob(submitit.helpers.Checkpointable):
    """One (method, seed) of a run, as submitit runs it (in every task of the job).

    Called as ``job(cfg_dict, method, seed, run_dir)``. It trains and evaluates through
    ``benchmarks.launching.jobs.run_job`` (which resumes from the newest checkpoint and skips evaluation
    cells already in ``metrics.csv``). On the preemption / time-limit signal, the trainer saves a
    checkpoint at the end of its current step (``benchmarks.core.distributed.PREEMPTION`` defers
    submitit's handler to that point), then submitit calls ``checkpoint()``, which resubmits the
    same call: the requeued job resumes from that checkpoint. The object pickles with only the
    names of the modules that register its methods (imported first, for plugin methods).
    """

    def __init__(self, modules: tuple[str, ...] = (), tensorboard: bool = False, progress: bool = True):
        self.modules = tuple(modules)
        self.tensorboard = tensorboard
        self.progress = progress
        """False for a --no-progress command: the job log holds only the plain stage lines."""

    def __call__(self, cfg_dict: dict, method: str, seed: int, run_dir: str) -> dict:
        for module in self.modules:
            importlib.import_module(module)
        if "SLURM_CPUS_PER_TASK" in os.environ:  # without CPU binding torch would use every core of the node
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        cfg = from_dict(cfg_dict)
        progress = getattr(self, "progress", True)  # a job pickled before the flag existed
        logs.configure(progress=progress)  # the job's stderr is its SLURM / submitit log file
        sig = preemption_signal()
        if callable(signal.getsignal(sig)):  # submitit's handler: defer it to step boundaries
            PREEMPTION.install(sig)
        try:
            main = DistEnv.from_environment().is_main
            if main:
                record_event(
                    run_dir,
                    method,
                    seed,
                    "start",
                    job_id=current_job_id(),
                    restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)),
                    from_step=RunDir(run_dir).job(method, seed).newest_step(),
                )
            lock = job_lock(run_dir, method, seed) if main else contextlib.nullcontext()
            with lock, logs.stage(f"job {method} seed {seed}", part="jobs"):
                summary = run_job(cfg, method, seed, run_dir, progress=progress, tensorboard=self.tensorboard)
            if main:
                record_event(run_dir, method, seed, "done", step=summary["step"])
            return summary
        finally:
            PREEMPTION.uninstall()

    def checkpoint(self, cfg_dict: dict, method: str, seed: int, run_dir: str) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's signal handler (rank 0) once the state on disk is current: after
        the trainer's preemption checkpoint, or at once outside training steps (evaluation,
        set-up), where the newest checkpoint already is the current state."""
        record_event(
            run_dir,
            method,
            seed,
            "requeue",
            job_id=current_job_id(),
            checkpoint_step=RunDir(run_dir).job(method, seed).newest_step(),
        )
        return submitit.helpers.DelayedSubmission(self, cfg_dict, method, seed, run_dir)


def preemption_signal() -> int:
    """The signal submitit's jobs checkpoint on: SIGUSR2 unless $SUBMITIT_PREEMPT_SIGNAL names another."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def current_job_id() -> str | None:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job
        return None


def plugin_modules(methods: list[str]) -> tuple[str, ...]:
    """Modules a job must import so that ``methods`` and every registered data set, tokenizer,
    feature extractor and metric are registered (built-ins and plugins)."""
    from benchmarks.data import datasets, tokenizers
    from benchmarks.evaluation import extractors, metrics
    from methods import get_method

    entries = {m for r in (datasets, tokenizers, extractors, metrics) for m in r.REGISTRY.modules()}
    return tuple(sorted({get_method(m).__module__ for m in methods} | entries))


# ----------------------------------------------------------------------------- job events


def record_event(run_dir: str | Path, method: str, seed: int, event: str, **fields) -> None:
    """Append ``{"event", "time", "host", "pid", **fields}`` to the job's ``job_events.jsonl``."""
    path = RunDir(run_dir).job(method, seed).events
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"event": event, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **fields})
    with open(path, "a") as f:  # one short write in append mode: lines never interleave
        f.write(line + "\n")


def read_events(run_dir: str | Path, method: str, seed: int) -> list[dict]:
    path = RunDir(run_dir).job(method, seed).events
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(run_dir: str | Path, method: str, seed: int, cfg: BenchmarkConfig) -> bool:
    """Whether the job is complete for ``cfg``: its last event is a finish at ``train.iterations``
    and ``metrics.csv`` holds every cell ``cfg`` evaluates at that last checkpoint (a rerun
    with cells added to ``eval.cells`` or ``eval.temperatures`` submits the job again; it skips
    training and evaluates only the missing cells)."""
    events = read_events(run_dir, method, seed)
    iterations = cfg.train.iterations
    if not (events and events[-1]["event"] == "done" and events[-1].get("step", 0) >= iterations):
        return False
    return not missing_cells(run_dir, method, seed, cfg)


PLANNED_CELL_KEY = ["method", "seed", "step", "sampler", "steps", "temperature", "cfg_scale", "n_samples"]
"""The part of a cell's identity (``results.CELL_KEY``) known before evaluating: not the feature
extractor's and reference statistics' ids, which need the extractor and the reference images."""


def missing_cells(run_dir: str | Path, method: str, seed: int, cfg: BenchmarkConfig) -> list:
    """The evaluation cells of ``cfg`` at the job's last checkpoint (step ``train.iterations``)
    without a row in ``metrics.csv`` ([] with evaluation off)."""
    if not cfg.eval.enabled:
        return []
    from benchmarks.evaluation.evaluator import checkpoint_cells
    from benchmarks.storage.results import cell_key, done_cells

    step = cfg.train.iterations
    done = done_cells(RunDir(run_dir).metrics, PLANNED_CELL_KEY)
    return [
        cell
        for cell in checkpoint_cells(cfg, method, step, is_last=True)
        if cell_key(planned_row(method, seed, step, cell), PLANNED_CELL_KEY) not in done
    ]


def planned_row(method: str, seed: int, step: int, cell) -> dict:
    """The ``PLANNED_CELL_KEY`` fields of a cell's future ``metrics.csv`` row."""
    return {
        "method": method,
        "seed": seed,
        "step": step,
        "sampler": cell.sampler,
        "steps": cell.steps,
        "temperature": cell.temperature,
        "cfg_scale": cell.cfg_scale,
        "n_samples": cell.num_samples,
    }


# ----------------------------------------------------------------------------- submission


def executor_parameters(launcher: LauncherConfig, name: str, setup: list[str]) -> dict:
    """submitit parameters of one job: ``launcher.nodes`` nodes, on each one task (DDP rank) per
    GPU, or one task without GPUs; so nodes x max(gpus_per_job, 1) ranks."""
    gpus = launcher.gpus_per_job
    if launcher.nodes > 1 and launcher.kind != "slurm":
        raise LaunchError(
            f"launcher.nodes={launcher.nodes} needs --launcher slurm (submitit's local executor runs "
            "one node); on one machine use launcher.gpus_per_job ranks, or torchrun --nnodes"
        )
    params = {
        "name": name,
        "timeout_min": launcher.timeout_min,
        "cpus_per_task": launcher.cpus_per_task,
        "mem_gb": float(launcher.mem_gb),
        "nodes": launcher.nodes,
        "tasks_per_node": max(gpus, 1),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if launcher.kind == "slurm":
        params.update(
            {
                f"slurm_{k}": v
                for k, v in [
                    ("partition", launcher.partition),
                    ("account", launcher.account),
                    ("qos", launcher.qos),
                    ("constraint", launcher.constraint),
                ]
                if v is not None
            }
        )
        # --requeue: requeueable even where the cluster's JobRequeue default says otherwise
        params.update(
            slurm_signal_delay_s=launcher.signal_delay_s,
            slurm_setup=setup,
            slurm_additional_parameters={"requeue": True},
        )
    else:
        params["local_setup"] = setup
    return params


def job_setup() -> list[str]:
    """Shell lines run before each job: the project importable, the same cache, quiet progress bars."""
    lines = [
        f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export TQDM_MININTERVAL={JOB_TQDM_MININTERVAL_S}",
    ]
    lines.append(f"export VQFLOW_CACHE={shlex.quote(str(cache_root().resolve()))}")
    return lines


def make_executor(cfg: BenchmarkConfig, folder: Path) -> submitit.AutoExecutor:
    launcher = cfg.launcher
    cluster = "slurm" if launcher.kind == "slurm" else "local"
    executor = submitit.AutoExecutor(
        folder=folder, cluster=cluster, **{f"{cluster}_max_num_timeout": launcher.max_num_timeout}
    )
    executor.update_parameters(**executor_parameters(launcher, f"vqflow-{cfg.name}", job_setup()))
    return executor


def submit(
    cfg: BenchmarkConfig,
    methods: list[str],
    seeds: list[int],
    run_dir: Path,
    *,
    tensorboard: bool = False,
    progress: bool = True,
) -> list[tuple[str, submitit.Job]]:
    """Submit the unfinished jobs (``finished``) as one array; returns (``method/seed<k>``, job)
    pairs. ``progress`` False: the jobs' logs get no progress bars (``--no-progress``)."""
    run_dir = Path(run_dir).resolve()
    run = RunDir(run_dir)
    busy = active_jobs(run_dir)
    if busy:
        raise LaunchError(
            f"jobs of {run_dir} are still queued or running ({', '.join(busy)}): wait for them "
            "(they resume and finish on their own) or cancel them before submitting again"
        )
    todo = [(m, s) for m in methods for s in seeds if not finished(run_dir, m, s, cfg)]
    skipped = [run.job(m, s).key for m in methods for s in seeds if (m, s) not in todo]
    if skipped:
        print(f"skipping {len(skipped)} finished job(s): {', '.join(skipped)}")
    for m, s in todo:
        events = read_events(run_dir, m, s)
        if events and events[-1]["event"] == "done" and events[-1].get("step", 0) >= cfg.train.iterations:
            n = len(missing_cells(run_dir, m, s, cfg))
            print(f"{run.job(m, s).key} finished training; submitting it again for {n} new evaluation cell(s)")
    if not todo:
        return []
    executor = make_executor(cfg, run.submitit)
    job = BenchmarkJob(plugin_modules(methods), tensorboard=tensorboard, progress=progress)
    n = len(todo)
    submitted = executor.map_array(
        job, [cfg.to_dict()] * n, [m for m, _ in todo], [s for _, s in todo], [str(run_dir)] * n
    )
    keys = [run.job(m, s).key for m, s in todo]
    jobs = list(zip(keys, submitted))
    array_id = submitted[0].job_id.split("_")[0]
    where = f"SLURM job array {array_id}" if cfg.launcher.kind == "slurm" else "local subprocesses"
    update_manifest(
        run_dir,
        {
            "launches": {
                array_id: {
                    "kind": cfg.launcher.kind,
                    "submitted": time.time(),
                    "jobs": {key: j.job_id for key, j in jobs},
                }
            }
        },
    )
    print(f"submitted {n} job(s) as {where}; logs in {run.submitit}")
    for key, j in jobs:
        print(f"  {j.job_id:<14} {key}")
    if cfg.launcher.kind == "slurm":
        print(f"follow with: squeue -j {array_id}   (or rerun the command with --wait)")
    sys.stdout.flush()
    return jobs


def active_jobs(run_dir: Path) -> list[str]:
    """Ids of jobs from earlier launches of the run (manifest ``launches``) still queued or running."""
    active = []
    for array_id, launched in read_manifest(run_dir).get("launches", {}).items():
        if launched["kind"] == "slurm":
            active += queued_slurm_jobs(array_id)
        else:
            active += [job_id for job_id in launched["jobs"].values() if local_controller_alive(job_id)]
    return active


def queued_slurm_jobs(array_id: str) -> list[str]:
    """squeue's ids of the array's queued or running tasks ([] if it knows none, or there is no squeue)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", array_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.split() if out.returncode == 0 else []


def local_controller_alive(pid: str) -> bool:
    """Whether process ``pid`` still runs submitit's local job controller."""
    try:
        return b"submitit.local._local" in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- following


def follow(
    jobs: list[tuple[str, submitit.Job]], timeout_s: float, *, progress: bool = True, poll_s: float = POLL_S
) -> None:
    """Wait for the jobs, with a bar over finished jobs and the states of the others.
    Raises LaunchError listing the failed jobs, or the unfinished ones after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pending = dict(jobs)
    failed: list[str] = []
    refreshed = float("-inf")
    with tqdm(total=len(jobs), desc="jobs finished", unit="job", disable=not progress, dynamic_ncols=True) as bar:
        while pending:
            if time.monotonic() - refreshed > ACCOUNTING_REFRESH_S:
                refresh_states(list(pending.values()))
                refreshed = time.monotonic()
            for key, job in list(pending.items()):
                if job.done():
                    del pending[key]
                    bar.update(1)
                    problem = job_problem(job)
                    if problem:
                        failed.append(f"{key} (job {job.job_id}): {problem}")
                        tqdm.write(f"job {job.job_id} ({key}) failed", file=sys.stderr)
            states = Counter(str(job.state).split()[0].lower() for job in pending.values())
            bar.set_postfix_str(", ".join(f"{state} {count}" for state, count in sorted(states.items())))
            if pending and time.monotonic() > deadline:
                raise LaunchError(f"gave up waiting after {timeout_s:.0f} s; {_unfinished(pending, failed)}")
            if pending:
                try:
                    time.sleep(poll_s)
                except KeyboardInterrupt:
                    raise LaunchError(f"stopped waiting; {_unfinished(pending, failed)}") from None
    if failed:
        raise LaunchError(f"{len(failed)} of {len(jobs)} job(s) failed:\n" + "\n".join(failed))


def _unfinished(pending: dict[str, submitit.Job], failed: list[str]) -> str:
    listing = ", ".join(f"{key} ({job.job_id})" for key, job in pending.items())
    return f"still running (they continue): {listing}" + ("\nfailed:\n" + "\n".join(failed) if failed else "")


def refresh_states(jobs: list[submitit.Job]) -> None:
    """One accounting query for all SLURM jobs (submitit otherwise backs off to one a minute)."""
    slurm_jobs = [job for job in jobs if isinstance(job, submitit.SlurmJob)]
    if slurm_jobs:
        slurm_jobs[0].watcher.update()


def job_problem(job: submitit.Job) -> str | None:
    """None if a finished job succeeded, else its error (with the log's tail) or final state."""
    try:
        error = job.exception()
    except UncompletedJobError as e:
        return f"ended without a result ({e})"[-3000:]
    return None if error is None else str(error)[-3000:]
