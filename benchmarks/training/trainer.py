"""The matched-budget trainer: one (method, seed) job, shared by every method.

Each step draws a global batch of codes from the memory-mapped shards, drops labels to the null
class with probability ``label_dropout``, lets the method draw the step's randomness for the
whole global batch, keeps this rank's rows, and takes an AdamW step with gradient clipping and
an EMA update. Nothing here knows which method it trains.

Checkpoints (model, EMA, optimizer, step, RNG states, timings, resolved config) are written
atomically every ``checkpoint_every`` steps and at the end; ``on_checkpoint`` (the evaluator)
runs after each one, so an interrupted evaluation is redone from the checkpoint on resume.
Because the data order and all noise come from generators saved in the checkpoint, a resumed
run continues with exactly the losses of an uninterrupted one (on CPU).

Preemption: a notice received during a step (``benchmarks.launching.distributed.PREEMPTION``, installed by
cluster jobs) makes the trainer save a checkpoint at the end of that step, with the partial log
interval, and hand over to the job's preemption handler (which requeues the job). Such an
off-schedule checkpoint is resumed from but never evaluated.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from backbones.dit import build_dit
from benchmarks.storage.atomic import atomic_path, save_torch
from benchmarks.config import BenchmarkConfig, TrainConfig, method_options
from benchmarks.launching.distributed import PREEMPTION, DistEnv
from benchmarks.training.flops import model_flops, parameter_count
from benchmarks.data.latents import LatentSpace
from methods import get_method
from methods.base import Method


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def device_autocast(device: torch.device):
    """The compute precision of training and sampling: bf16 autocast on CUDA, float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def job_dir(run_dir: Path, method: str, seed: int) -> Path:
    return Path(run_dir) / method / f"seed{seed}"


def build_method(cfg: BenchmarkConfig, name: str, latents: LatentSpace) -> Method:
    cls = get_method(name)
    return cls(latents.tokenizer.codebook, latents.tokenizer.normalized, **method_options(cfg, name))


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

    def __init__(self, cfg: BenchmarkConfig, method_name: str, seed: int, run_dir: Path,
                 latents: LatentSpace, *, dist: DistEnv | None = None, progress: bool = True):
        self.cfg, self.method_name, self.seed, self.latents = cfg, method_name, seed, latents
        self.dist = dist or DistEnv()
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.dist.local_rank)
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dist.init_process_group(self.device)
        self.dir = job_dir(run_dir, method_name, seed)
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
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=t.betas,
                                           weight_decay=t.weight_decay, fused=True)
        self.forward_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(seed + 1_000_003)
        self.step = 0
        self.train_wall_s = 0.0
        self.log_sums: dict[str, float] = {}
        """Sums of the step statistics since the last log row (saved, so a preemption mid-interval
        still logs the interval's true mean)."""

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("step_*.pt"))

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_dir / f"step_{self.step:09d}.pt"
        if self.dist.is_main:
            save_torch({
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "train_wall_s": self.train_wall_s,
                "log_sums": dict(self.log_sums),
                "rng": {"data": self.data_gen.get_state(), "noise": self.noise_gen.get_state(),
                        "torch": torch.get_rng_state()},
                "method": self.method_name,
                "seed": self.seed,
                "config": self.cfg.to_dict(),
            }, path)
            for old in self.checkpoints()[:-self.cfg.train.keep_checkpoints]:
                old.unlink()
        self.dist.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["method"] != self.method_name or state["seed"] != self.seed:
            raise ValueError(f"{path} belongs to {state['method']} seed {state['seed']}, "
                             f"not {self.method_name} seed {self.seed}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.train_wall_s = float(state["train_wall_s"])
        self.log_sums = dict(state.get("log_sums", {}))
        self.data_gen.set_state(state["rng"]["data"])
        self.noise_gen.set_state(state["rng"]["noise"].to(self.noise_gen.get_state().device))
        torch.set_rng_state(state["rng"]["torch"])

    # ------------------------------------------------------------------ logging
    @property
    def log_path(self) -> Path:
        return self.dir / "train_log.csv"

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

    # ------------------------------------------------------------------ training
    def autocast(self):
        return device_autocast(self.device)

    def train_step(self) -> dict[str, float]:
        t, shards = self.cfg.train, self.latents.shards
        idx = torch.randint(len(shards), (t.batch_size,), generator=self.data_gen)
        codes, labels = shards.batch(idx)
        dropped = torch.rand(t.batch_size, generator=self.data_gen) < t.label_dropout
        labels = labels.masked_fill(dropped, self.latents.num_classes)
        codes, labels = codes.to(self.device), labels.to(self.device)
        draws = self.method.draw(codes, self.noise_gen)
        rows = self.dist.local_slice(t.batch_size)
        codes, labels = codes[rows], labels[rows]
        draws = {k: v[rows] for k, v in draws.items()}

        self.model.train()
        with self.autocast():
            out = self.method.loss(self.forward_model, codes, labels, draws)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(t, self.step)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        stats = {k: self.dist.mean(v.detach().float()).item() for k, v in out.items()}
        stats["grad_norm"] = float(grad_norm)
        return stats

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * params."""
        decay = self.cfg.train.ema_decay
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    def event(self) -> CheckpointEvent:
        t = self.cfg.train
        return CheckpointEvent(method=self.method, ema=self.ema, step=self.step,
                               images_seen=self.step * t.batch_size,
                               train_flops=float(self.step * self.flops_per_step),
                               train_wall_s=self.train_wall_s, params=self.params, seed=self.seed,
                               job_dir=self.dir, device=self.device, is_last=self.step >= t.iterations)

    def on_schedule(self, step: int) -> bool:
        """Whether ``step`` is a scheduled (evaluated) checkpoint: every ``checkpoint_every`` steps and the last."""
        t = self.cfg.train
        return step % t.checkpoint_every == 0 or step >= t.iterations

    def run(self, *, resume: bool = True,
            on_checkpoint: Callable[[CheckpointEvent], None] | None = None) -> dict:
        """Train to ``train.iterations``. With ``resume``, continue from the newest checkpoint
        (re-running ``on_checkpoint`` for it if it is a scheduled one, so interrupted evaluations
        complete). After a preemption checkpoint, returns early where the job's handler returns
        (ranks > 0; under submitit rank 0 exits instead)."""
        t = self.cfg.train
        existing = self.checkpoints()
        if existing and not resume:
            raise FileExistsError(f"{self.dir} already has checkpoints; resume or choose another --out")
        if existing:
            self.load_checkpoint(existing[-1])
            self._truncate_log()
            if on_checkpoint is not None and self.on_schedule(self.step):
                with PREEMPTION.interruptible():
                    on_checkpoint(self.event())
        bar = tqdm(total=t.iterations, initial=self.step, desc=f"train {self.method_name} seed {self.seed}",
                   disable=not self.progress, dynamic_ncols=True, unit="step")
        pending: list[dict] = []
        interval_start, interval_steps = time.perf_counter(), 0
        while self.step < t.iterations:
            with PREEMPTION.deferred():  # a preemption signal waits for the end of the step
                start = time.perf_counter()
                stats = self.train_step()
                self.train_wall_s += time.perf_counter() - start
                for k, v in stats.items():
                    self.log_sums[k] = self.log_sums.get(k, 0.0) + v
                interval_steps += 1
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.iterations:
                    n = self.step % t.log_every or t.log_every
                    now = time.perf_counter()
                    row = {"step": self.step, "images_seen": self.step * t.batch_size,
                           **{k: v / n for k, v in self.log_sums.items()},
                           "train_wall_s": round(self.train_wall_s, 4),
                           "steps_per_s": round(interval_steps / max(now - interval_start, 1e-9), 3)}
                    pending.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    self.log_sums, interval_start, interval_steps = {}, now, 0
                scheduled = self.on_schedule(self.step)
                preempted = PREEMPTION.requested(self.dist, self.device)
                if scheduled or preempted:
                    self._write_log(pending)
                    pending = []
                    self.save_checkpoint()
                if preempted:
                    bar.close()
                    PREEMPTION.act()  # under submitit: checkpoint(), requeue, exit (rank 0)
                    break
            if scheduled and on_checkpoint is not None:
                with PREEMPTION.interruptible():
                    on_checkpoint(self.event())
        bar.close()
        return {"method": self.method_name, "seed": self.seed, "step": self.step, "params": self.params,
                "flops_per_step": self.flops_per_step, "train_wall_s": self.train_wall_s}
