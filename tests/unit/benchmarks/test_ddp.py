"""Data parallelism inside a job: ranks from torchrun / SLURM / submitit environments, the SLURM
resources of a job (one DDP rank per GPU), and a 2-rank gloo run of the real trainer that matches a
1-process run with the same global batch."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from benchmarks.core.config import load_config
from benchmarks.core.distributed import PORT_BASE, PORT_SPAN, PREEMPTION, DistEnv, first_host, rendezvous_port
from benchmarks.training.trainer import Trainer
from tests.support.ranks import free_port, member_of_group
from tests.unit.benchmarks.test_preemption import Requeued, StandInHandler, install_stand_in, signal_during_step

# ----------------------------------------------------------------------------- environments


def test_torchrun_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    assert DistEnv.from_environment(env) == DistEnv(3, 4, 1)  # torchrun wins; it sets its own rendezvous


def test_srun_step_environment():
    env = {
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    got = DistEnv.from_environment(env)
    assert (got.rank, got.world_size, got.local_rank) == (1, 2, 1)
    assert (got.master_addr, got.master_port) == ("gpu07", PORT_BASE + 4242)
    assert not got.is_main and got.enabled


def test_batch_script_outside_srun_is_one_process():
    """sbatch's batch step has SLURM_NTASKS of the allocation and SLURM_PROCID=0 but no step:
    treating it as rank 0 of several would wait forever for ranks that never start."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1"}
    assert DistEnv.from_environment(env) == DistEnv()


def test_submitit_local_environment():
    env = {
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_ID": "31337",
    }
    got = DistEnv.from_environment(env)
    assert (got.rank, got.world_size, got.master_addr) == (1, 2, "127.0.0.1")
    assert got.master_port == PORT_BASE + 31337 % PORT_SPAN
    assert DistEnv.from_environment({"SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_NTASKS": "1"}) == DistEnv()


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("localhost", "localhost"),
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("a1,b[2-3]", "a1"),
        ("node[003,010-011]-ib", "node003-ib"),
    ],
)
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_rendezvous_port_is_derived_from_the_job():
    assert rendezvous_port("123") == PORT_BASE + 123
    assert rendezvous_port("123") != rendezvous_port("124")
    assert PORT_BASE <= rendezvous_port(str(10**9 + 7)) < PORT_BASE + PORT_SPAN


def test_local_slice_splits_the_global_batch():
    rows = [DistEnv(r, 4).local_slice(32) for r in range(4)]
    assert [(s.start, s.stop) for s in rows] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    with pytest.raises(ValueError, match="batch_size 30 is not divisible by the world size 4"):
        DistEnv(0, 4).local_slice(30)


# ----------------------------------------------------------------------------- job resources


# ----------------------------------------------------------------------------- 2 ranks vs 1 process


def tiny_config(*overrides: str):
    return load_config(
        "smoke",
        [
            "backbone=tiny/1",
            "eval.enabled=false",
            "train.batch_size=8",
            "train.log_every=1",
            "train.checkpoint_every=3",
            "train.iterations=6",
            "train.lr=1e-3",
            "train.ema_decay=0.9",
            "train.device=cpu",
            "launcher.preemption_check_every=2",
            *overrides,
        ],
    )


def _train_rank(rank: int, world: int, port: int, method: str, overrides: list[str], latents, folder: str) -> None:
    """One rank of a torchrun-style job. Each rank gets its own run folders, so the test can see
    that only rank 0 writes anything. First a full run; then a run in which only rank 1 receives
    the preemption signal (during step 2), whose outcome each rank reports in ``folder``."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    dist = DistEnv.from_environment()
    with member_of_group():
        Trainer(
            tiny_config(*overrides), method, 0, f"{folder}/full/rank{rank}", latents, dist=dist, progress=False
        ).run()

        handler = StandInHandler(rank)
        install_stand_in(handler)
        trainer = handler.trainer = Trainer(
            tiny_config(*overrides), method, 0, f"{folder}/preempted/rank{rank}", latents, dist=dist, progress=False
        )
        if rank == 1:
            signal_during_step(trainer, 2)
        try:
            outcome = f"returned at step {trainer.run()['step']}"
        except Requeued:
            outcome = "requeued"
        PREEMPTION.uninstall()
        with open(f"{folder}/outcome{rank}.json", "w") as f:
            json.dump({"outcome": outcome, "handler_steps": [c["step"] for c in handler.calls]}, f)


@pytest.mark.slow
@pytest.mark.parametrize("method, overrides", [("purr", []), ("dfm", ["methods.dfm.masked_only=true"])])
def test_two_gloo_ranks_match_one_process(method, overrides, toy_latents, tmp_path):
    """Every rank draws the same global batch and noise and keeps its half; DDP averages the
    gradients, so the loss trace, gradient norms and final weights are the single-process ones
    (for dfm's ``masked_only`` loss too, normalised by the global batch's masked count).
    A preemption signal that reaches one rank stops all ranks at the end of the same step."""
    single = Trainer(tiny_config(*overrides), method, 0, tmp_path / "single", toy_latents, progress=False)
    single.run()
    mp.spawn(_train_rank, args=(2, free_port(), method, overrides, toy_latents, str(tmp_path)), nprocs=2, join=True)

    job = f"{method}/seed0"
    for phase in ("full", "preempted"):
        assert not any((tmp_path / phase / "rank1").rglob("*")), "ranks > 0 must not write logs, checkpoints or results"
    want, got = pd.read_csv(single.log_path), pd.read_csv(tmp_path / "full" / "rank0" / job / "train_log.csv")
    assert list(got["step"]) == list(range(1, 7))
    for column in ("loss", "grad_norm"):
        pd.testing.assert_series_equal(got[column], want[column], rtol=1e-5, atol=0)

    (checkpoint,) = sorted((tmp_path / "full" / "rank0" / job / "checkpoints").glob("step_*.pt"))
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 6
    for key in ("model", "ema"):
        reference = getattr(single, key).state_dict()
        for name, value in state[key].items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-6, msg=f"{key}.{name}")

    outcomes = [json.loads((tmp_path / f"outcome{rank}.json").read_text()) for rank in (0, 1)]
    assert outcomes == [
        {"outcome": "requeued", "handler_steps": [2]},
        {"outcome": "returned at step 2", "handler_steps": [2]},
    ]
    saved = sorted((tmp_path / "preempted" / "rank0" / job / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in saved] == ["step_000000002.pt"]
