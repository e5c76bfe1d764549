"""``--dry-run``: the job plan and its cost, from the config alone.

Nothing is read from disk and no full-size weights are built: parameter counts and FLOPs come
from the backbone built on the meta device, the latent grid and codebook size from the
tokenizer's published architecture (or its config for the suite's VQ-VAE).

Cost model: training FLOPs per step = FLOPs of one forward + backward pass of the backbone on
the global batch (``benchmarks.training.flops.model_flops``); sampling FLOPs per image = forward FLOPs x
NFE. GPU time = FLOPs / (peak x utilisation), where the utilisation is an assumption
(``--utilisation``) unless the training step time was measured: then training GPU time =
seconds per step x iterations x GPUs per job (``StepTime``: ``--step-seconds``, or the per-method
times recorded in a previous run's ``manifest.json``, ``--step-seconds-from``). Training and
evaluation are printed apart, per job (one method, one seed) and in total; evaluation is sharded
over the job's GPUs, so its wall time is its GPU time / ``launcher.gpus_per_job``. FLOPs print in
GFLOP to EFLOP and GPU time in GPU-seconds, -minutes or -hours, whichever keeps the largest entry
at least 1.

The plan also sizes a checkpoint (model, EMA and AdamW's two moments, float32: 16 bytes per
parameter) and its write time at ``ASSUMED_WRITE_BYTES_PER_S``, against the preemption warning
``launcher.signal_delay_s``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.core.config import BenchmarkConfig
from benchmarks.storage.run_dir import RunDir
from benchmarks.training.flops import meta_parameter_count, model_flops
from methods import get_method
from methods.sampling import build_sampler

CHECKPOINT_BYTES_PER_PARAM = 16
"""float32 model + EMA + AdamW's exp_avg and exp_avg_sq."""
ASSUMED_WRITE_BYTES_PER_S = 200e6
"""A conservative write rate to a shared (network) filesystem under load."""
ROW_BYTES = 1000
"""An upper bound of the text one evaluation cell adds to the results and traces files."""
LOG_ROW_BYTES = 200
"""An upper bound of one training-log row."""


FLOP_UNITS = (("GFLOP", 1e9), ("TFLOP", 1e12), ("PFLOP", 1e15), ("EFLOP", 1e18))
GPU_TIME_UNITS = (("GPU-seconds", 1.0), ("GPU-minutes", 60.0), ("GPU-hours", 3600.0))


def unit_for(values: list[float], units: tuple[tuple[str, float], ...]) -> tuple[str, float]:
    """The largest (name, scale) of ``units`` in which the largest of ``values`` is at least 1
    (the smallest unit if none), so small configs print GFLOP and GPU-seconds, not 0.0 PFLOP."""
    largest = max(values, default=0.0)
    fitting = [unit for unit in units if largest >= unit[1]]
    return fitting[-1] if fitting else units[0]


def number(value: float) -> str:
    """1234.5 -> '1,234.5'; below 1, two significant digits (0.0012), so no cost prints as 0.0."""
    return f"{value:,.1f}" if value >= 1 or value == 0 else f"{value:.2g}"


@dataclass(frozen=True)
class StepTime:
    """Measured seconds per training step of the global batch on ``gpus`` GPUs, per method
    (``"*"``: every method), and where the numbers come from."""

    seconds: dict[str, float]
    gpus: int
    source: str

    def of(self, method: str) -> float | None:
        return self.seconds.get(method, self.seconds.get("*"))


def step_time_from_run(run_dir: str | Path, cfg: BenchmarkConfig) -> StepTime:
    """Per-method seconds per step (mean over seeds) from a run folder's ``manifest.json``; the run
    must have the planned backbone and global batch."""
    path = RunDir(run_dir).manifest
    if not path.is_file():
        raise ValueError(f"--step-seconds-from: {path} does not exist (give a run folder of a finished run)")
    manifest = json.loads(path.read_text())
    ran = manifest.get("config", {})
    planned = {"backbone": cfg.backbone, "train.batch_size": cfg.train.batch_size}
    found = {"backbone": ran.get("backbone"), "train.batch_size": ran.get("train", {}).get("batch_size")}
    if found != planned:
        raise ValueError(
            f"--step-seconds-from {run_dir}: that run has {found}, the plan {planned}; "
            "step times only carry over between runs of the same backbone and global batch"
        )
    per_method: dict[str, list[float]] = {}
    gpus = set()
    for job in manifest.get("jobs", {}).values():
        if job.get("step"):
            per_method.setdefault(job["method"], []).append(job["train_wall_s"] / job["step"])
            gpus.add(int(job.get("world_size", 1)))
    if not per_method:
        raise ValueError(f"--step-seconds-from {run_dir}: its manifest records no trained jobs")
    if len(gpus) > 1:
        raise ValueError(f"--step-seconds-from {run_dir}: its jobs ran on different GPU counts {sorted(gpus)}")
    seconds = {m: sum(v) / len(v) for m, v in per_method.items()}
    return StepTime(
        seconds, gpus.pop(), f"measured in {path} on {manifest.get('machine', {}).get('gpu') or 'its machine'}"
    )


@dataclass(frozen=True)
class LatentShape:
    codebook_size: int
    code_dim: int
    grid: tuple[int, int]
    num_classes: int


def latent_shape(cfg: BenchmarkConfig) -> LatentShape:
    """K, d, (h, w) and the class count implied by the config, without reading any data."""
    from benchmarks.data.datasets import get_dataset
    from benchmarks.data.tokenizers import get_tokenizer

    k, d, f = get_tokenizer(cfg.tokenizer.kind).geometry(cfg.tokenizer)
    classes = get_dataset(cfg.data.dataset).dry_run_classes(cfg.data)
    if classes is None:
        raise ValueError("--dry-run needs data.num_classes for this dataset (e.g. --set data.num_classes=1000)")
    side = cfg.data.image_size // f
    return LatentShape(k, d, (side, side), classes)


def checkpoint_steps(cfg: BenchmarkConfig) -> list[int]:
    return cfg.train.checkpoint_steps()


@dataclass(frozen=True)
class Schedule:
    """The checkpoint schedule in constant memory: how many checkpoints, the first and last few, and
    the steps where the evaluation cells differ from the rest (the last and ``eval.sweep_at``)."""

    count: int
    head: list[int]
    tail: list[int]
    last: int
    sweep_at: int

    def special(self) -> list[int]:
        return sorted({self.last, self.sweep_at})


def schedule(cfg: BenchmarkConfig, few: int = 3) -> Schedule:
    t = cfg.train
    if t.checkpoint_schedule == "log":
        steps: list[int] | range = t.checkpoint_steps()  # at most num_checkpoints
        count, head, tail = len(steps), list(steps[:few]), list(steps[-few:])
    else:
        steps = range(t.checkpoint_every, t.iterations + 1, t.checkpoint_every)  # lazy: any budget
        extra = [] if steps and steps[-1] == t.iterations else [t.iterations]
        count = len(steps) + len(extra)
        head = (list(steps[:few]) + extra)[:few]
        tail = (list(steps[-few:]) + extra)[-few:]
    sweep_at = cfg.eval.sweep_at if cfg.eval.sweep_at is not None else t.iterations
    return Schedule(count, head, tail, t.iterations, sweep_at)


def cells_at(cfg: BenchmarkConfig, method: str, *, last: bool, sweep: bool) -> list[tuple[int, float, float, int]]:
    """(network evaluations per sample before guidance, temperature, cfg scale, samples) of the
    cells of one checkpoint of a job of ``method`` (an adaptive sampler's evaluations are not known
    ahead: its ``steps`` stand in for them)."""
    ev = cfg.eval
    if not ev.enabled:
        return []
    tau = ev.method_temperature.get(method, 1.0)
    here = [
        (
            build_sampler(c.sampler).evaluations(c.steps) or c.steps,
            c.temperature if c.temperature is not None else tau,
            c.cfg_scale,
            c.num_samples or ev.num_samples,
        )
        for c in ev.cells
        if (c.at == "every" or last) and (c.methods is None or method in c.methods)
    ]
    if sweep:
        here += [(ev.sweep_steps, t, 1.0, ev.sweep_samples or ev.num_samples) for t in ev.temperatures]
    return list(dict.fromkeys(here))


def evaluation_cells(cfg: BenchmarkConfig, method: str, steps: list[int]) -> list[tuple[int, int, float, float, int]]:
    """(checkpoint step, network evaluations, temperature, cfg scale, samples) for every cell a job runs."""
    sweep_at = cfg.eval.sweep_at if cfg.eval.sweep_at is not None else steps[-1]
    return [
        (step, *cell)
        for step in steps
        for cell in cells_at(cfg, method, last=step == steps[-1], sweep=step == sweep_at)
    ]


def cell_totals(cfg: BenchmarkConfig, method: str, plan: Schedule) -> tuple[int, float]:
    """(number of cells, sum of sampler steps x samples, x2 with guidance) of a job, in constant memory."""

    def weigh(cells) -> tuple[int, float]:
        return len(cells), sum(n_steps * (1 if w == 1.0 else 2) * n for n_steps, _, w, n in cells)

    special = plan.special()
    count, weight = weigh(cells_at(cfg, method, last=False, sweep=False))
    count, weight = count * (plan.count - len(special)), weight * (plan.count - len(special))
    for step in special:
        c, w = weigh(cells_at(cfg, method, last=step == plan.last, sweep=step == plan.sweep_at))
        count, weight = count + c, weight + w
    return count, weight


def listed_cells(cfg: BenchmarkConfig, method: str, plan: Schedule, few: int = 3) -> str:
    """The first and last ``few`` cells of a job, and how many there are."""
    total = cell_totals(cfg, method, plan)[0]

    def at(steps: list[int]) -> list[tuple]:
        return [
            (step, *cell)
            for step in steps
            for cell in cells_at(cfg, method, last=step == plan.last, sweep=step == plan.sweep_at)
        ]

    first, last = at(plan.head)[:few], at(plan.tail)[-few:]
    shown = first + ["..."] + last if total > 2 * few else list(dict.fromkeys(first + last))
    text = "; ".join(
        c if c == "..." else f"step {c[0]:,}: {c[1]} steps, tau {c[2]:g}, cfg {c[3]:g}, {c[4]:,} samples" for c in shown
    )
    return f"evaluation cells per job ({method}): {total:,} in all: {text}"


def output_bytes(cfg: BenchmarkConfig, methods: list[str], seeds: list[int]) -> int:
    """An upper bound of what a run writes into its folder: the kept checkpoints, one sample grid
    (uncompressed) and the result rows per evaluation cell, and the training log of every job."""
    shape, plan, t = latent_shape(cfg), schedule(cfg), cfg.train
    grid = cfg.eval.grid_samples * cfg.data.image_size**2 * 3
    total = 0
    for name in methods:
        io = get_method(name)(torch.empty(shape.codebook_size, shape.code_dim, device="meta")).backbone_io()
        params = meta_parameter_count(cfg.backbone, io, shape.grid, shape.num_classes)
        cells = cell_totals(cfg, name, plan)[0]
        checkpoints = min(t.keep_checkpoints, plan.count) * params * CHECKPOINT_BYTES_PER_PARAM
        total += checkpoints + cells * (grid + ROW_BYTES) + t.iterations // t.log_every * LOG_ROW_BYTES
    return total * len(seeds)


def disk_room_error(cfg: BenchmarkConfig, methods: list[str], seeds: list[int], out: Path) -> str | None:
    """Why the run's outputs cannot fit the free disk under ``out`` (with the estimate), or None."""
    from benchmarks.storage.writable import free_bytes, human_bytes

    need, free = output_bytes(cfg, methods, seeds), free_bytes(out)
    if need <= free:
        return None
    return (
        f"this run writes about {human_bytes(need)} into --out {out} ({schedule(cfg).count:,} evaluated "
        f"checkpoints per job), only {human_bytes(free)} is free; lower train.iterations or raise "
        "train.checkpoint_every, or choose an --out on a larger disk"
    )


def dry_run(
    cfg: BenchmarkConfig,
    methods: list[str],
    seeds: list[int],
    *,
    peak_tflops: float,
    utilisation: float,
    step_time: StepTime | None = None,
) -> str:
    shape = latent_shape(cfg)
    plan = schedule(cfg)
    measured = [m for m in methods if step_time is not None and step_time.of(m) is not None]
    cost = f"cost at {utilisation:.0%} of {peak_tflops:g} TFLOP/s per GPU (assumed utilisation, --utilisation)"
    if measured:
        cost = (
            f"training cost from measured step times ({step_time.source}; {step_time.gpus} GPU(s) per job): "
            + ", ".join(f"{m} {step_time.of(m):.3g} s/step" for m in measured)
            + f"; evaluation and other methods {cost}"
        )
    lines = [
        f"config {cfg.name}: {cfg.description}".rstrip(": "),
        f"backbone {cfg.backbone}; tokenizer {cfg.tokenizer.kind} (K={shape.codebook_size}, d={shape.code_dim}); "
        f"latent grid {shape.grid[0]}x{shape.grid[1]}; {shape.num_classes} classes",
        f"jobs: {len(methods)} methods x {len(seeds)} seeds = {len(methods) * len(seeds)} "
        f"(methods {', '.join(methods)}; seeds {', '.join(map(str, seeds))})",
        f"training: {cfg.train.iterations:,} iterations x global batch {cfg.train.batch_size}; "
        f"{plan.count:,} checkpoints: {', '.join(f'{s:,}' for s in plan.head)}"
        + (f" ... {', '.join(f'{s:,}' for s in plan.tail)}" if plan.count > len(plan.head) else ""),
        cost + ":",
        "",
    ]
    rows, largest = [], 0
    for name in methods:
        io = get_method(name)(torch.empty(shape.codebook_size, shape.code_dim, device="meta")).backbone_io()
        params = meta_parameter_count(cfg.backbone, io, shape.grid, shape.num_classes)
        step_flops = model_flops(cfg.backbone, io, shape.grid, shape.num_classes, batch=1) * cfg.train.batch_size
        forward = model_flops(cfg.backbone, io, shape.grid, shape.num_classes, batch=1, backward=False)
        n_cells, weight = cell_totals(cfg, name, plan)
        eval_flops = forward * weight
        train_flops = step_flops * cfg.train.iterations
        flops_seconds = lambda flops: flops / (peak_tflops * 1e12 * utilisation)  # noqa: E731
        train_s = (
            step_time.of(name) * cfg.train.iterations * step_time.gpus
            if name in measured
            else flops_seconds(train_flops)
        )
        rows.append((name, params, step_flops, train_flops, train_s, n_cells, eval_flops, flops_seconds(eval_flops)))
        largest = max(largest, params)
    flop_unit, flop_scale = unit_for([max(r[3], r[6]) for r in rows], FLOP_UNITS)
    time_unit, time_scale = unit_for([max(r[4], r[7]) for r in rows], GPU_TIME_UNITS)
    header = (
        f"{'method':<14}{'params':>14}{'train GFLOP/step':>18}{f'train {flop_unit}':>14}{f'train {time_unit}':>19}"
        f"{'eval cells':>12}{f'eval {flop_unit}':>13}{f'eval {time_unit}':>18}"
    )
    lines += ["per job (one method, one seed):", header, "-" * len(header)]
    for name, params, step_flops, train_flops, train_s, n_cells, eval_flops, eval_s in rows:
        lines.append(
            f"{name:<14}{params / 1e6:>13.1f}M{step_flops / 1e9:>18,.1f}{number(train_flops / flop_scale):>14}"
            f"{number(train_s / time_scale):>19}{n_cells:>12,}{number(eval_flops / flop_scale):>13}"
            f"{number(eval_s / time_scale):>18}"
        )
    jobs, gpus = len(methods) * len(seeds), max(cfg.launcher.gpus_per_job, 1)
    train_total, eval_total = (sum(r[i] for r in rows) * len(seeds) for i in (4, 7))
    unit, scale = unit_for([train_total + eval_total], GPU_TIME_UNITS)
    eval_wall, wall_scale = unit_for([eval_total / max(jobs, 1) / gpus], GPU_TIME_UNITS)
    lines += [
        "",
        f"total for {jobs} jobs: training {number(train_total / scale)} {unit}, evaluation "
        f"{number(eval_total / scale)} {unit} (sampling; decoding and FID feature extraction not included), "
        f"together {number((train_total + eval_total) / scale)} {unit}",
        f"evaluation is sharded over a job's {gpus} GPU(s) (launcher.gpus_per_job): about "
        f"{number(eval_total / max(jobs, 1) / gpus / wall_scale)} {eval_wall.removeprefix('GPU-')} "
        "of evaluation wall time per job",
    ]
    lines.append(job_wall_note(cfg, {r[0]: r[4] + r[7] for r in rows}))
    lines.append(checkpoint_note(cfg, largest))
    lines.append(f"disk: about {disk_text(cfg, methods, seeds)} of outputs (checkpoints, sample grids, logs)")
    if methods and cfg.eval.enabled:
        lines.append(listed_cells(cfg, methods[0], plan))
    return "\n".join(lines)


def disk_text(cfg: BenchmarkConfig, methods: list[str], seeds: list[int]) -> str:
    from benchmarks.storage.writable import human_bytes

    return human_bytes(output_bytes(cfg, methods, seeds))


def job_wall_note(cfg: BenchmarkConfig, gpu_seconds: dict[str, float]) -> str:
    """A job's resources, ``launcher.nodes`` x ``gpus_per_job`` = W ranks, and its wall time: the
    GPU time (training + evaluation) of each method / W, against ``launcher.timeout_min`` (a
    longer job is requeued from its checkpoints, ``max_num_timeout`` times at most)."""
    launcher = cfg.launcher
    world = launcher.nodes * max(launcher.gpus_per_job, 1)
    walls = {name: seconds / world for name, seconds in gpu_seconds.items()}
    unit, scale = unit_for(list(walls.values()) or [0.0], GPU_TIME_UNITS)
    per_method = ", ".join(f"{name} {number(wall / scale)}" for name, wall in walls.items())
    longest = max(walls.values(), default=0.0)
    slots = -(-longest // (launcher.timeout_min * 60)) if longest else 1
    return (
        f"per job: {launcher.nodes} node(s) x {launcher.gpus_per_job} GPU(s) (launcher.nodes x "
        f"launcher.gpus_per_job) = {world} rank(s); wall time per job about {per_method} "
        f"{unit.removeprefix('GPU-')} (GPU time / {world}); launcher.timeout_min={launcher.timeout_min}: "
        f"{int(slots)} time slot(s) for the longest job"
    )


def checkpoint_note(cfg: BenchmarkConfig, params: int) -> str:
    """The largest job's checkpoint size and write time against the preemption warning."""
    size = params * CHECKPOINT_BYTES_PER_PARAM
    write_s = size / ASSUMED_WRITE_BYTES_PER_S
    delay = cfg.launcher.signal_delay_s
    note = (
        f"checkpoint: {size / 1e9:.1f} GB (model, EMA, AdamW moments), {write_s:.0f} s to write at "
        f"{ASSUMED_WRITE_BYTES_PER_S / 1e6:.0f} MB/s; preemption warning launcher.signal_delay_s = {delay} s, "
        f"checked every launcher.preemption_check_every = {cfg.launcher.preemption_check_every} steps"
    )
    if write_s > delay / 2:
        note += (
            f"\nWARNING: the checkpoint write takes more than half the preemption warning; raise "
            f"launcher.signal_delay_s to at least {int(2 * write_s) + 60}"
        )
    return note
