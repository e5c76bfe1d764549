"""Data-parallel context and preemption notices.

``DistEnv``: rank and world size from torchrun's, SLURM's (srun, submitit) or submitit's local
environment. The global batch stays what the config says; each rank takes ``batch / world`` rows
of it. NCCL on GPUs, gloo on CPU. For SLURM and submitit-local multi-task jobs the rendezvous
(``MASTER_ADDR``/``MASTER_PORT``) is derived from the job: the first host of the job's node list
and a port computed from the job id, so concurrent jobs on one node do not collide.

``PREEMPTION``: SLURM warns a job with a signal (submitit asks for SIGUSR2) before it preempts it
or its time runs out; submitit's handler then calls the job's ``checkpoint()``, requeues the job
and exits, wherever in the program the signal landed. Inside an optimizer step the trainer's state
is inconsistent (parameters updated, EMA or step counter not yet), so ``PreemptionNotice`` wraps
that handler: while the trainer is inside a step (``deferred()``) a signal only records a request;
the trainer sees it at the step boundary (``requested()``, agreed by all ranks), saves a checkpoint
there and calls ``act()``, which runs the original handler. Everywhere else (setting up, evaluating
after a checkpoint: the newest checkpoint is current there) the handler runs at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

COLLECTIVE_TIMEOUT = timedelta(hours=2)
"""How long a rank waits in a collective. Every rank samples its share of each evaluation cell;
rank 0 alone computes a cell's metrics from the gathered features (and, once per run, the
tokenizer floor) while the others move on, so this must exceed that (NCCL's default is 10 min)."""
PORT_BASE, PORT_SPAN = 20_000, 20_000
"""Rendezvous port of a SLURM / submitit-local job: PORT_BASE + job id mod PORT_SPAN."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    """Rendezvous host and port to export before ``init_process_group`` (None: already in the
    environment, e.g. from torchrun, or a single process)."""
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> DistEnv:
        """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (and MASTER_ADDR/MASTER_PORT). srun (and so
        submitit on SLURM) sets SLURM_PROCID/SLURM_LOCALID and the step's task count
        SLURM_STEP_NUM_TASKS; submitit's local executor sets SUBMITIT_LOCAL_GLOBALID/LOCALID/NTASKS.
        Without any of them, a single process. A SLURM batch script outside srun counts as one
        process even when the allocation has several tasks."""
        env = os.environ if env is None else env
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
        if tasks > 1 and "SLURM_PROCID" in env:
            host = first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1")
            return cls(
                int(env["SLURM_PROCID"]),
                tasks,
                int(env.get("SLURM_LOCALID", 0)),
                master_addr=host,
                master_port=rendezvous_port(env["SLURM_JOB_ID"]),
            )
        tasks = int(env.get("SUBMITIT_LOCAL_NTASKS", "1"))
        if tasks > 1 and "SUBMITIT_LOCAL_GLOBALID" in env:
            return cls(
                int(env["SUBMITIT_LOCAL_GLOBALID"]),
                tasks,
                int(env.get("SUBMITIT_LOCAL_LOCALID", 0)),
                master_addr="127.0.0.1",
                master_port=rendezvous_port(env["SUBMITIT_LOCAL_JOB_ID"]),
            )
        return cls()

    def local_slice(self, batch: int) -> slice:
        """The rows of a global batch this rank trains on."""
        if batch % self.world_size:
            raise ValueError(f"train.batch_size {batch} is not divisible by the world size {self.world_size}")
        per_rank = batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def init_process_group(self, device: torch.device) -> None:
        if self.enabled and not torch_dist.is_initialized():
            if self.master_addr is not None:
                os.environ.setdefault("MASTER_ADDR", self.master_addr)
                os.environ.setdefault("MASTER_PORT", str(self.master_port))
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch_dist.init_process_group(
                backend, rank=self.rank, world_size=self.world_size, timeout=COLLECTIVE_TIMEOUT
            )

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduce mean of a scalar tensor across ranks (identity on one process)."""
        if self.enabled:
            value = value.clone()
            torch_dist.all_reduce(value)
            value /= self.world_size
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any rank (a collective: all ranks must call it)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj):
        """The list of every rank's picklable ``obj`` (in rank order) on rank 0, None elsewhere (a
        collective: all ranks must call it)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        torch_dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's picklable ``obj`` on every rank (a collective)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first comma outside brackets ends the first group
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            end = i
            break
    group = nodelist[:end].strip()
    if "[" not in group:
        return group
    prefix, rest = group.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def rendezvous_port(job_id: str) -> int:
    """A port for the job's process group, derived from its (numeric) job id."""
    digits = "".join(c for c in str(job_id) if c.isdigit())
    return PORT_BASE + int(digits or 0) % PORT_SPAN


class PreemptionNotice:
    """Defers the preemption signal's handler to a training-step boundary (see the module docstring).

    install(sig) wraps the handler currently installed for ``sig`` (submitit's); uninstall()
    restores it. Not installed, every method is a no-op that reports no request.
    """

    def __init__(self) -> None:
        self._signal: int | None = None
        self._handler: Callable | None = None
        self._deferring = False
        self._pending: int | None = None

    @property
    def installed(self) -> bool:
        return self._signal is not None

    def install(self, sig: int) -> None:
        if self.installed:
            raise RuntimeError(f"a preemption notice is already installed for signal {self._signal}")
        previous = signal.getsignal(sig)
        if not callable(previous):
            raise RuntimeError(
                f"no Python handler is installed for signal {signal.Signals(sig).name} "
                "(submitit installs one in its jobs): nothing to defer"
            )
        self._signal, self._handler, self._pending = sig, previous, None
        signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(self._signal, self._handler)
        self._signal, self._handler, self._pending, self._deferring = None, None, None, False

    def _on_signal(self, signum: int, frame) -> None:
        if self._deferring:
            self._pending = signum
        else:
            self._handler(signum, frame)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, a preemption signal is only recorded (for ``requested()``)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside, the handler runs as soon as a signal arrives, or at once for one already recorded.
        For code after a saved checkpoint (evaluation), where stopping loses nothing."""
        was_deferring, self._deferring = self._deferring, False
        try:
            if self._pending is not None:
                self.act()
            yield
        finally:
            self._deferring = was_deferring

    def requested(self, dist: DistEnv, device: torch.device) -> bool:
        """Whether any rank has received the signal. A collective when installed on several ranks:
        every rank calls it at the same step."""
        if not self.installed:
            return False
        return dist.any(self._pending is not None, device)

    def act(self) -> None:
        """Run the original handler now. Under submitit, on rank 0 it calls the job's
        ``checkpoint()``, requeues the job and exits; on other ranks it returns."""
        if not self.installed:
            return
        signum, self._pending = self._pending or self._signal, None
        self._handler(signum, None)


PREEMPTION = PreemptionNotice()
"""The process's notice (signals are process-wide)."""
