"""The matched-budget trainer: one (method, seed) job, shared by every method.

Each step draws a global batch of codes from the memory-mapped shards, drops labels to the null
class with probability ``label_dropout``, lets the method draw the step's randomness for the
whole global batch, keeps this rank's rows, and takes an AdamW step with gradient clipping and
an EMA update. Nothing here knows which method it trains.

Checkpoints (model, EMA, optimizer, step, RNG states, timings, resolved config) are written
atomically at the scheduled steps (``train.checkpoint_steps()``: every ``checkpoint_every``
steps, or log-spaced, and the last); ``on_checkpoint`` (the evaluator, on every rank) runs after
each one, so an interrupted evaluation is redone from the checkpoint on resume.
Because the data order and all noise come from generators saved in the checkpoint, a resumed
run continues with exactly the losses of an uninterrupted one (on CPU).

Preemption: a notice received during a step (``benchmarks.core.distributed.PREEMPTION``, installed by
cluster jobs) makes the trainer save a checkpoint at the end of that step, with the partial log
interval, and hand over to the job's preemption handler (which requeues the job). Such an
off-schedule checkpoint is resumed from but never evaluated. With several ranks, agreeing on a
notice is a collective, so it is checked every ``launcher.preemption_check_every`` steps and at
scheduled checkpoints.

The hot path does not wait for the device: batches are gathered ahead on a thread
(``benchmarks.training.prefetch``), step statistics (loss, its diagnostics, the gradient norm) are
summed on the device and read back, averaged over ranks, once per log interval.

Divergence: the trainer also tracks on the device the first step whose loss or gradient norm is
not finite. It reads that at each log interval and before every checkpoint, and stops with
``TrainingDiverged`` (naming method, seed and step) instead of saving or evaluating a non-finite
model; the last good checkpoint stays on disk.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from backbones.dit import build_dit
from benchmarks.core.config import BenchmarkConfig, TrainConfig, method_options
from benchmarks.core.device import device_autocast, resolve_device
from benchmarks.core.distributed import PREEMPTION, DistEnv
from benchmarks.data.latents import LatentSpace
from benchmarks.storage.atomic import atomic_path, save_torch
from benchmarks.storage.run_dir import RunDir
from benchmarks.training.flops import model_flops, parameter_count
from benchmarks.training.prefetch import BatchPrefetcher
from benchmarks.training.utilisation import TensorMemory
from methods import get_method
from methods.base import Method


class CorruptCheckpointError(ValueError):
    """A training checkpoint that cannot be loaded; the message names the file."""


def learning_rate(train: TrainConfig, step: int) -> float:
    """The learning rate of 0-based ``step``: linear warmup over the first ``warmup`` steps,
    lr * (step + 1) / warmup, then with s = (step - warmup) / (iterations - warmup) in [0, 1):
    ``constant`` lr, ``cosine`` lr * (1 + cos(pi s)) / 2, ``linear`` lr * (1 - s)."""
    if step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    s = (step - train.warmup) / max(1, train.iterations - train.warmup)
    if train.lr_schedule == "cosine":
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * s))
    if train.lr_schedule == "linear":
        return train.lr * (1.0 - s)
    return train.lr


def build_method(cfg: BenchmarkConfig, name: str, latents: LatentSpace) -> Method:
    cls = get_method(name)
    return cls(latents.tokenizer.codebook, latents.tokenizer.normalized, **method_options(cfg, name))


class TrainingDiverged(RuntimeError):
    """A job's loss or gradient norm stopped being finite; nothing after its last good checkpoint
    was saved or evaluated."""

    def __init__(self, method: str, seed: int, step: int, last_good: Path | None):
        self.method, self.seed, self.step, self.last_good = method, seed, step, last_good
        kept = f"its last good checkpoint {last_good} is kept" if last_good else "no checkpoint was saved"
        super().__init__(
            f"{method} seed {seed} diverged: the loss or gradient norm is not finite at step {step}; "
            f"training stopped and {kept} (lower train.lr, or check the data)"
        )


@dataclass
class CheckpointEvent:
    """What the evaluator gets after each checkpoint of a job."""

    method: Method
    ema: nn.Module
    step: int
    images_seen: int
    train_flops: float
    train_wall_s: float
    params: int
    seed: int
    job_dir: Path
    device: torch.device
    is_last: bool
    extra: dict = field(default_factory=dict)


class Trainer:
    """Trains one method with one seed under the config's shared budget."""

    def __init__(
        self,
        cfg: BenchmarkConfig,
        method_name: str,
        seed: int,
        run_dir: Path,
        latents: LatentSpace,
        *,
        dist: DistEnv | None = None,
        progress: bool = True,
    ):
        self.cfg, self.method_name, self.seed, self.latents = cfg, method_name, seed, latents
        self.dist = dist or DistEnv()
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.dist.local_rank)
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dist.init_process_group(self.device)
        self.job = RunDir(run_dir).job(method_name, seed)
        self.progress = progress and self.dist.is_main

        self.method = build_method(cfg, method_name, latents).to(self.device)
        io = self.method.backbone_io()
        grid, classes = latents.shards.grid, latents.num_classes
        torch.manual_seed(seed)
        self.model = build_dit(cfg.backbone, io, grid, classes).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.params = parameter_count(self.model)
        self.flops_per_step = model_flops(cfg.backbone, io, grid, classes, batch=1) * cfg.train.batch_size
        t = cfg.train
        # fused: one kernel for the whole update; 10% less CPU per mini/2 step than torch's CPU default
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=True
        )
        self.forward_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # the only buffer is the constant position table (nothing to broadcast each step);
            # gradients live in DDP's buckets instead of a second copy (2.8 GiB at DiT-XL/2)
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True
            )
        if t.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.data_state = self.data_gen.get_state()
        """The data generator's state after the last batch trained on (the prefetcher runs ahead)."""
        self.batches: BatchPrefetcher | None = None
        self.noise_gen = torch.Generator(device=self.device).manual_seed(seed + 1_000_003)
        self.step = 0
        self.train_wall_s = 0.0
        self.train_cpu_s = 0.0
        """This process's CPU seconds (``time.process_time``, all its threads) over the same spans as
        ``train_wall_s``: on cores shared with other work it still measures the step's own cost."""
        self.peak_step_bytes: int | None = None
        """Peak bytes of live tensors over one steady-state training step of this invocation (see
        ``measure_step_memory``); None until measured."""
        self.log_sums: dict[str, torch.Tensor | float] = {}
        """Sums of this rank's step statistics since the last log row, on the device (saved averaged
        over ranks, so a preemption mid-interval still logs the interval's true mean)."""
        self.first_nonfinite = torch.tensor(math.inf, device=self.device)
        """The first step whose loss or gradient norm was not finite (inf: none), on the device."""

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        return self.job.checkpoints()

    def save_checkpoint(self) -> Path:
        """Save the current state (a collective: every rank calls it). Refuses a diverged model."""
        self.check_finite()
        path = self.job.checkpoint(self.step)
        log_sums = self.reduced_log_sums()
        if self.dist.is_main:
            save_torch(
                {
                    "model": self.model.state_dict(),
                    "ema": self.ema.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "step": self.step,
                    "train_wall_s": self.train_wall_s,
                    "train_cpu_s": self.train_cpu_s,
                    "log_sums": log_sums,
                    "rng": {
                        "data": self.data_state,
                        "noise": self.noise_gen.get_state(),
                        "torch": torch.get_rng_state(),
                    },
                    "method": self.method_name,
                    "seed": self.seed,
                    "config": self.cfg.to_dict(),
                },
                path,
            )
            for old in self.checkpoints()[: -self.cfg.train.keep_checkpoints]:
                old.unlink()
        self.dist.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        try:
            # Read onto the CPU, memory-mapped: load_state_dict copies weights and optimizer moments to
            # their device, and the RNG states (CPU ByteTensors, a CUDA generator's included) stay where
            # they must be. Mapping the file to a GPU moved them there, and set_state refused them.
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            missing = {"model", "ema", "optimizer", "step", "rng", "method", "seed"} - set(state)
        except Exception as err:  # noqa: BLE001 (torch raises RuntimeError, UnpicklingError, EOFError, ...)
            raise CorruptCheckpointError(
                f"checkpoint {path} is unreadable ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'no details'})"
            ) from None
        if missing:
            raise CorruptCheckpointError(
                f"checkpoint {path} is not a training checkpoint (no {', '.join(sorted(missing))})"
            )
        if state["method"] != self.method_name or state["seed"] != self.seed:
            raise ValueError(
                f"{path} belongs to {state['method']} seed {state['seed']}, not {self.method_name} seed {self.seed}"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.train_wall_s = float(state["train_wall_s"])
        self.train_cpu_s = float(state.get("train_cpu_s", 0.0))  # absent before CPU time was recorded
        self.log_sums = dict(state.get("log_sums", {}))
        self.data_gen.set_state(state["rng"]["data"])
        self.data_state = self.data_gen.get_state()
        self.close_batches()  # batches gathered ahead came from the old generator state
        self.noise_gen.set_state(state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])

    def resume_from_newest(self, checkpoints: list[Path]) -> None:
        """Load the newest readable checkpoint. An unreadable one (truncated by a full disk, or
        another file saved under its name) is renamed ``*.corrupt`` with a warning naming it, and
        the previous one is tried; with none left, training starts from step 0."""
        for path in reversed(checkpoints):
            try:
                self.load_checkpoint(path)
                return
            except CorruptCheckpointError as err:
                if self.dist.is_main:
                    path.replace(path.with_name(path.name + ".corrupt"))
                self.dist.barrier()
                older = [p for p in checkpoints if p < path]
                then = f"resuming from {older[-1].name}" if older else "training starts again from step 0"
                warnings.warn(f"{err}; renamed it to {path.name}.corrupt, {then}", stacklevel=2)

    # ------------------------------------------------------------------ logging
    @property
    def log_path(self) -> Path:
        return self.job.train_log

    def _truncate_log(self) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be redone)."""
        if not self.log_path.exists() or not self.dist.is_main:
            return
        with open(self.log_path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if int(r["step"]) <= self.step]
        if len(kept) != len(rows):
            with atomic_path(self.log_path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(kept)

    def _write_log(self, rows: list[dict]) -> None:
        if not rows or not self.dist.is_main:
            return
        new = not self.log_path.exists()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)

    # ------------------------------------------------------------------ statistics
    def reduced_log_sums(self) -> dict[str, float]:
        """The interval's statistic sums, averaged over ranks and read back (a collective)."""
        if not self.log_sums:
            return {}
        names = list(self.log_sums)
        sums = torch.stack([torch.as_tensor(self.log_sums[k], dtype=torch.float32, device=self.device) for k in names])
        return dict(zip(names, self.dist.mean(sums).tolist()))

    def check_finite(self) -> None:
        """Raise ``TrainingDiverged`` on every rank if any rank saw a non-finite loss or gradient norm."""
        first = float(self.first_nonfinite)
        if self.dist.any(math.isfinite(first), self.device):
            existing = self.checkpoints()
            raise TrainingDiverged(
                self.method_name,
                self.seed,
                int(first) if math.isfinite(first) else self.step,
                existing[-1] if existing else None,
            )

    # ------------------------------------------------------------------ training
    def autocast(self):
        return device_autocast(self.device)

    def next_batch(self):
        if self.batches is None:
            t = self.cfg.train
            self.batches = BatchPrefetcher(
                self.latents.shards,
                self.data_gen,
                batch_size=t.batch_size,
                label_dropout=t.label_dropout,
                null_label=self.latents.num_classes,
                device=self.device,
            )
        batch = self.batches.next()
        self.data_state = batch.data_state
        return batch.codes, batch.labels

    def close_batches(self) -> None:
        if self.batches is not None:
            self.batches.close()
            self.batches = None

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step on the next global batch. Returns this rank's statistics as
        on-device scalars (nothing is read back here)."""
        t = self.cfg.train
        codes, labels = self.next_batch()
        draws = self.method.draw(codes, self.noise_gen)
        rows = self.dist.local_slice(t.batch_size)
        codes, labels = codes[rows], labels[rows]
        draws = {k: v[rows] for k, v in draws.items()}

        self.model.train()
        with self.autocast():
            out = self.method.loss(self.forward_model, codes, labels, draws)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip, foreach=True)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(t, self.step)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        stats = {k: v.detach().float() for k, v in out.items()}
        stats["grad_norm"] = grad_norm.detach().float()
        finite = torch.isfinite(torch.stack([stats["loss"], stats["grad_norm"]])).all()
        self.first_nonfinite = torch.where(finite, self.first_nonfinite, self.first_nonfinite.clamp_max(self.step))
        return stats

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * params (``torch.optim.swa_utils``' EMA update: one
        fused lerp over all parameters)."""
        ema_update = get_ema_multi_avg_fn(self.cfg.train.ema_decay)
        ema_update(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()], self.step)

    def event(self) -> CheckpointEvent:
        t = self.cfg.train
        return CheckpointEvent(
            method=self.method,
            ema=self.ema,
            step=self.step,
            images_seen=self.step * t.batch_size,
            train_flops=float(self.step * self.flops_per_step),
            train_wall_s=self.train_wall_s,
            params=self.params,
            seed=self.seed,
            job_dir=self.job.path,
            device=self.device,
            is_last=self.step >= t.iterations,
        )

    def _train(self, bar: tqdm, on_checkpoint: Callable[[CheckpointEvent], None] | None) -> None:
        """The training loop of ``run``. ``train_wall_s`` (and ``train_cpu_s``) count the time from
        one point where the host waited for the device (a log row's read-back, a checkpoint's
        finiteness check) to the next, less logging, checkpointing and evaluation."""
        t = self.cfg.train
        pending: list[dict] = []
        mark = self.clock()
        interval_start = mark[0]
        interval_steps = 0
        step_memory_measured = False
        while self.step < t.iterations:
            with PREEMPTION.deferred():  # a preemption signal waits for the end of the step
                if self.step >= 1 and not step_memory_measured:  # the optimizer state exists
                    with self.measure_step_memory():
                        stats = self.train_step()
                    step_memory_measured = True
                else:
                    stats = self.train_step()
                for k, v in stats.items():
                    self.log_sums[k] = self.log_sums.get(k, 0.0) + v
                interval_steps += 1
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.iterations:
                    n = self.step % t.log_every or t.log_every
                    means = {k: v / n for k, v in self.reduced_log_sums().items()}  # waits for the device
                    self.charge_time(mark)
                    now = time.perf_counter()
                    self.check_finite()
                    pending.append(
                        {
                            "step": self.step,
                            "images_seen": self.step * t.batch_size,
                            **means,
                            "train_wall_s": round(self.train_wall_s, 4),
                            "steps_per_s": round(interval_steps / max(now - interval_start, 1e-9), 3),
                        }
                    )
                    bar.set_postfix(loss=f"{means['loss']:.4f}")
                    self.log_sums, interval_start, interval_steps = {}, now, 0
                    mark = self.clock()
                scheduled = self.on_schedule(self.step)
                preempted = self.preemption_requested(scheduled)
                if scheduled or preempted:
                    self.check_finite()  # waits for the device; a diverged model is never saved
                    self.charge_time(mark)
                    self._write_log(pending)
                    pending = []
                    self.save_checkpoint()
                if preempted:
                    bar.close()
                    PREEMPTION.act()  # under submitit: checkpoint(), requeue, exit (rank 0)
                    return
            if scheduled and on_checkpoint is not None:
                with PREEMPTION.interruptible():
                    on_checkpoint(self.event())
            if scheduled:
                mark = self.clock()
                interval_start = mark[0]

    @staticmethod
    def clock() -> tuple[float, float]:
        """(wall seconds, this process's CPU seconds) now."""
        return time.perf_counter(), time.process_time()

    def charge_time(self, mark: tuple[float, float]) -> None:
        """Add the wall and CPU seconds since ``mark`` (a ``clock()`` reading) to the training time."""
        wall, cpu = self.clock()
        self.train_wall_s += wall - mark[0]
        self.train_cpu_s += cpu - mark[1]

    @contextlib.contextmanager
    def measure_step_memory(self):
        """Record in ``peak_step_bytes`` the peak bytes of live tensors over the block (one training
        step): ``torch.cuda.max_memory_allocated`` on CUDA; elsewhere ``TensorMemory``, counting
        from the step's starting state (parameters, the last step's gradients, which live until
        the backward pass replaces them, EMA, optimizer moments). Not measured under
        ``torch.compile``, whose graphs hide their intermediates from the count."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            self.peak_step_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        if self.cfg.train.compile:
            yield
            return
        optimizer_state = [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        with TensorMemory(self.model.parameters(), grads, self.ema.parameters(), optimizer_state) as mem:
            yield
        self.peak_step_bytes = mem.peak

    def preemption_requested(self, scheduled: bool) -> bool:
        """Whether a preemption notice arrived. With several ranks that is a collective that waits
        for the device, so it is asked every ``launcher.preemption_check_every`` steps and at
        scheduled checkpoints only."""
        every = self.cfg.launcher.preemption_check_every
        if self.dist.enabled and not (scheduled or self.step % every == 0):
            return False
        return PREEMPTION.requested(self.dist, self.device)

    def on_schedule(self, step: int) -> bool:
        """Whether ``step`` is a scheduled (evaluated) checkpoint: ``train.checkpoint_steps()``
        (every ``checkpoint_every`` steps, or log-spaced) and the last."""
        return self.cfg.train.is_checkpoint_step(step)

    def run(self, *, resume: bool = True, on_checkpoint: Callable[[CheckpointEvent], None] | None = None) -> dict:
        """Train to ``train.iterations``. With ``resume``, continue from the newest checkpoint
        (re-running ``on_checkpoint`` for it if it is a scheduled one, so interrupted evaluations
        complete). After a preemption checkpoint, returns early where the job's handler returns
        (ranks > 0; under submitit rank 0 exits instead)."""
        t = self.cfg.train
        existing = self.checkpoints()
        if existing and not resume:
            raise FileExistsError(f"{self.job.path} already has checkpoints; resume or choose another --out")
        if existing:
            self.resume_from_newest(existing)
        self._truncate_log()
        if self.step and on_checkpoint is not None and self.on_schedule(self.step):
            with PREEMPTION.interruptible():
                on_checkpoint(self.event())
        bar = tqdm(
            total=t.iterations,
            initial=self.step,
            desc=f"train {self.method_name} seed {self.seed}",
            disable=not self.progress,
            dynamic_ncols=True,
            unit="step",
        )
        try:
            self._train(bar, on_checkpoint)
        finally:
            self.close_batches()
        bar.close()
        return {
            "method": self.method_name,
            "seed": self.seed,
            "step": self.step,
            "params": self.params,
            "flops_per_step": self.flops_per_step,
            "train_wall_s": self.train_wall_s,
            "train_cpu_s": self.train_cpu_s,
            **({"peak_step_bytes": self.peak_step_bytes} if self.peak_step_bytes is not None else {}),
        }
