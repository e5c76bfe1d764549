"""Preemption: the signal SLURM sends before it preempts a job (or its time runs out) makes the
trainer checkpoint at the end of its current step; the requeued job resumes to exactly the weights
of an uninterrupted run, and evaluation rows come out complete, without duplicates, and only at
scheduled checkpoints."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest
import torch

from benchmarks.core.config import load_config
from benchmarks.core.distributed import PREEMPTION
from benchmarks.launching.jobs import run_job
from benchmarks.launching.launch import LaunchError, follow, read_events, submit
from benchmarks.storage.results import cell_key
from benchmarks.storage.run_dir import RunDir
from benchmarks.training.trainer import Trainer

SIG = signal.SIGUSR2


class Requeued(Exception):
    """What the stand-in handler raises where submitit's would requeue the job and exit."""


class StandInHandler:
    """Stands in for submitit's SIGUSR2 handler: records the trainer's step and saved checkpoints
    at the moment it runs, then raises Requeued on rank 0 (submitit exits there) and returns on
    other ranks (as submitit's does)."""

    def __init__(self, rank: int = 0):
        self.rank = rank
        self.trainer: Trainer | None = None
        self.calls: list[dict] = []

    def __call__(self, signum, frame) -> None:
        saved = [int(p.stem.split("_")[1]) for p in self.trainer.checkpoints()]
        self.calls.append({"step": self.trainer.step, "saved": saved})
        if self.rank == 0:
            raise Requeued


def install_stand_in(handler: StandInHandler) -> None:
    signal.signal(SIG, handler)
    PREEMPTION.install(SIG)


def signal_during_step(trainer: Trainer, step: int) -> None:
    """Send SIGUSR2 to this process in the middle of training step ``step`` (inside the loss)."""
    loss = trainer.method.loss

    def loss_then_signal(*args, **kwargs):
        if trainer.step == step - 1:  # the counter advances at the end of the step
            os.kill(os.getpid(), SIG)
        return loss(*args, **kwargs)

    trainer.method.loss = loss_then_signal


@pytest.fixture
def stand_in():
    previous = signal.getsignal(SIG)
    handler = StandInHandler()
    install_stand_in(handler)
    yield handler
    PREEMPTION.uninstall()
    signal.signal(SIG, previous)


def tiny_config():
    return load_config(
        "smoke",
        [
            "backbone=tiny/1",
            "eval.enabled=false",
            "train.batch_size=8",
            "train.log_every=2",
            "train.checkpoint_every=4",
            "train.iterations=8",
            "train.lr=1e-3",
            "train.ema_decay=0.9",
            "train.device=cpu",
        ],
    )


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for key in ("model", "ema"):
        want = getattr(a, key).state_dict()
        for name, value in getattr(b, key).state_dict().items():
            torch.testing.assert_close(value, want[name], rtol=0, atol=0, msg=f"{key}.{name}")
    want = a.optimizer.state_dict()["state"]
    for index, state in b.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(value, want[index][name], rtol=0, atol=0, msg=f"optimizer {index}.{name}")


def test_signal_mid_step_checkpoints_at_step_end_and_resumes(stand_in, toy_latents, tmp_path):
    cfg, method = tiny_config(), "purr"
    reference = Trainer(cfg, method, 0, tmp_path / "reference", toy_latents, progress=False)
    reference.run()

    evaluated: list[int] = []
    first = Trainer(cfg, method, 0, tmp_path / "run", toy_latents, progress=False)
    stand_in.trainer = first
    signal_during_step(first, 5)  # off the schedule (4, 8) and in the middle of a log interval (5-6)
    with pytest.raises(Requeued):
        first.run(on_checkpoint=lambda event: evaluated.append(event.step))
    assert stand_in.calls == [{"step": 5, "saved": [5]}], "the handler must run after the step-5 checkpoint"

    resumed = Trainer(cfg, method, 0, tmp_path / "run", toy_latents, progress=False)
    resumed.run(on_checkpoint=lambda event: evaluated.append(event.step))
    assert evaluated == [4, 8], "a preemption checkpoint is resumed from, never evaluated"
    assert_same_state(reference, resumed)
    want, got = pd.read_csv(reference.log_path), pd.read_csv(resumed.log_path)
    assert list(got["step"]) == [2, 4, 6, 8]
    pd.testing.assert_series_equal(got["loss"], want["loss"], rtol=1e-6, atol=0)  # row 6 spans the preemption


def test_signal_during_evaluation_requeues_and_redoes_it(stand_in, toy_latents, tmp_path):
    cfg = tiny_config()
    evaluated: list[tuple[int, str]] = []

    def evaluate_with_signal(event):
        evaluated.append((event.step, "started"))
        if event.step == 4 and len(evaluated) == 1:
            os.kill(os.getpid(), SIG)  # an evaluation may take minutes: the handler must not wait for it
        evaluated.append((event.step, "finished"))

    first = Trainer(cfg, "cfm", 0, tmp_path, toy_latents, progress=False)
    stand_in.trainer = first
    with pytest.raises(Requeued):
        first.run(on_checkpoint=evaluate_with_signal)
    assert stand_in.calls == [{"step": 4, "saved": [4]}]
    resumed = Trainer(cfg, "cfm", 0, tmp_path, toy_latents, progress=False)
    resumed.run(on_checkpoint=evaluate_with_signal)
    assert evaluated == [(4, "started"), (4, "started"), (4, "finished"), (8, "started"), (8, "finished")]


def test_install_needs_a_python_handler():
    previous = signal.signal(SIG, signal.SIG_DFL)
    try:
        with pytest.raises(RuntimeError, match="no Python handler is installed for signal SIGUSR2"):
            PREEMPTION.install(SIG)
    finally:
        signal.signal(SIG, previous)


# ----------------------------------------------------------------------------- the real submitit path


def _metric_keys(path) -> list[tuple]:
    return [cell_key(row) for row in pd.read_csv(path).to_dict("records")]


@pytest.mark.slow
def test_preempted_submitit_job_requeues_to_uninterrupted_result(shared_cache, tmp_path, monkeypatch):
    """The smoke benchmark's purr job through submitit's local executor: SIGUSR2 to the job's
    process after the first evaluation, submitit's real handler checkpoints and requeues
    (the local executor restarts the job), and the run ends as an uninterrupted one does."""
    monkeypatch.setenv("VQFLOW_CACHE", str(shared_cache))
    cfg = load_config(
        "smoke",
        ["train.iterations=60", "train.checkpoint_every=30", "eval.temperatures=[]", "launcher.kind=submitit-local"],
    )
    run_job(cfg, "purr", 0, tmp_path / "reference", progress=False)

    run = tmp_path / "interrupted"
    jobs = submit(cfg, ["purr"], [0], run)
    deadline = time.monotonic() + 300
    while not ((run / "metrics.csv").exists() and 30 in set(pd.read_csv(run / "metrics.csv")["step"])):
        assert time.monotonic() < deadline and not jobs[0][1].done(), jobs[0][1].stderr()
        time.sleep(0.2)
    os.kill(read_events(run, "purr", 0)[0]["pid"], SIG)
    follow(jobs, 300, progress=False, poll_s=0.5)

    events = read_events(run, "purr", 0)
    assert [e["event"] for e in events] == ["start", "requeue", "start", "done"], events
    preempted_at = events[1]["checkpoint_step"]
    assert 30 <= preempted_at < 60 and events[2]["from_step"] == preempted_at
    assert events[3]["step"] == 60

    ckpt = "purr/seed0/checkpoints/step_000000060.pt"
    want, got = (torch.load(tmp_path / name / ckpt, weights_only=True) for name in ("reference", "interrupted"))
    for key in ("model", "ema"):
        for name, value in got[key].items():
            torch.testing.assert_close(value, want[key][name], rtol=1e-5, atol=1e-7, msg=f"{key}.{name}")
    logs = [pd.read_csv(RunDir(tmp_path / name).job("purr", 0).train_log) for name in ("reference", "interrupted")]
    pd.testing.assert_series_equal(logs[1]["loss"], logs[0]["loss"], rtol=1e-5, atol=0)

    keys, reference_keys = _metric_keys(run / "metrics.csv"), _metric_keys(tmp_path / "reference" / "metrics.csv")
    assert len(keys) == len(set(keys)), "duplicate evaluation rows"
    assert sorted(keys) == sorted(reference_keys), "evaluation rows differ from the uninterrupted run's"
    assert {int(k[2]) for k in keys} == {30, 60}, "only scheduled checkpoints are evaluated"


def test_a_failing_job_is_reported_with_its_error(tmp_path):
    cfg = load_config(
        "smoke", ["launcher.kind=submitit-local", "data.dataset=shards", f"data.path={tmp_path / 'no-such-shards'}"]
    )
    jobs = submit(cfg, ["cfm"], [0], tmp_path / "run")
    with pytest.raises(LaunchError, match=r"1 of 1 job\(s\) failed:\ncfm/seed0 \(job \d+\):(.|\n)*no-such-shards"):
        follow(jobs, 300, progress=False, poll_s=0.5)
