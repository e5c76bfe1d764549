"""One benchmark job = one (method, seed): prepare the shared latent space, train, evaluate.

Every launcher (in-process, submitit subprocesses, SLURM job arrays) runs this same function,
so a job's results do not depend on where it ran.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.core import logs
from benchmarks.core.config import BenchmarkConfig
from benchmarks.core.distributed import DistEnv
from benchmarks.data.latents import LatentSpace, prepare_latents
from benchmarks.storage.manifest import add_timings, now_iso, update_manifest
from benchmarks.training.trainer import Trainer
from benchmarks.training.utilisation import mfu, process_peak_flops

log = logs.get_logger("jobs")


def latents_for(cfg: BenchmarkConfig, progress: bool = True) -> LatentSpace:
    d, tok = cfg.data, cfg.tokenizer
    return prepare_latents(d.dataset, d.path, d.image_size, tok.kind, tok.ckpt, tok.vqvae, progress=progress)


def prepare_recorded_latents(
    cfg: BenchmarkConfig, run_dir: Path, *, progress: bool, record: bool = True
) -> LatentSpace:
    """Open (or build) the run's latent space and record its info and cost in the manifest."""
    start, started = time.perf_counter(), now_iso()
    latents = latents_for(cfg, progress=progress)
    if record:
        update_manifest(run_dir, {"latents": latents.info})
        add_timings(run_dir, ("timings", "latents"), {"total_s": time.perf_counter() - start}, started=started)
    return latents


def make_evaluator(
    cfg: BenchmarkConfig, latents: LatentSpace, run_dir: Path, progress: bool, dist: DistEnv | None = None
):
    if not cfg.eval.enabled:
        return None
    from benchmarks.evaluation.evaluator import Evaluator

    return Evaluator(cfg, latents, run_dir, progress=progress, dist=dist)


def run_job(
    cfg: BenchmarkConfig,
    method: str,
    seed: int,
    run_dir: str | Path,
    *,
    latents: LatentSpace | None = None,
    evaluator=None,
    progress: bool = True,
    tensorboard: bool = False,
) -> dict:
    """Train (resuming from the newest checkpoint if any) and evaluate one job; returns its summary.
    ``tensorboard``: also copy the job's logs, FIDs and sample grids into TensorBoard event files
    after each checkpoint (``benchmarks.launching.tensorboard_log``)."""
    run_dir = Path(run_dir)
    start, started = time.perf_counter(), now_iso()
    dist = DistEnv.from_environment()
    if latents is None:
        latents = prepare_recorded_latents(cfg, run_dir, progress=progress and dist.is_main, record=dist.is_main)
    if evaluator is None:
        evaluator = make_evaluator(cfg, latents, run_dir, progress and dist.is_main, dist)
    trainer = Trainer(cfg, method, seed, run_dir, latents, dist=dist, progress=progress)
    peak = process_peak_flops(trainer.device)
    eval_seconds = 0.0

    from_step = trainer.job.newest_step()
    board = None
    if tensorboard and dist.is_main:
        from benchmarks.launching.tensorboard_log import TensorBoardLog

        board = TensorBoardLog(run_dir, method, seed, cfg.train.lr, from_step=from_step)

    def after_checkpoint(event) -> None:
        nonlocal eval_seconds
        if evaluator is not None:
            start = time.perf_counter()
            evaluator(event)
            eval_seconds += time.perf_counter() - start
        if board is not None:
            board(event)

    # every rank samples its share of each evaluation cell; only rank 0 writes TensorBoard
    run_evaluator = after_checkpoint if evaluator is not None or board is not None else None
    if from_step >= cfg.train.iterations:
        log.info(
            "%s seed %d: training skipped, already at step %d of %d; evaluating missing cells",
            method,
            seed,
            from_step,
            cfg.train.iterations,
        )
    elif from_step:
        log.info("%s seed %d: resuming training at step %d of %d", method, seed, from_step, cfg.train.iterations)
    summary = trainer.run(resume=True, on_checkpoint=run_evaluator)
    if board is not None:
        board.close()
    per_device_step_flops = summary["flops_per_step"] / dist.world_size
    seconds_per_step = max(summary["train_wall_s"], 1e-9) / max(summary["step"], 1)
    summary.update(
        world_size=dist.world_size,
        peak_flops_per_s=peak,
        achieved_flops_per_s=per_device_step_flops / seconds_per_step,
        mfu=mfu(per_device_step_flops, seconds_per_step, peak),
    )
    if dist.is_main:
        key = trainer.job.key
        update_manifest(run_dir, {"jobs": {key: summary}})
        add_timings(
            run_dir,
            ("jobs", key),
            {"eval_s": eval_seconds, "wall_s": time.perf_counter() - start},
            started=started,
            from_step=from_step,
            to_step=summary["step"],
        )
    summary.update(eval_s=round(eval_seconds, 2))  # this invocation, this rank (the manifest keeps the sums)
    return summary
