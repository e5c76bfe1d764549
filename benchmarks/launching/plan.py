"""``--dry-run``: the job plan and its cost, from the config alone.

Nothing is read from disk and no full-size weights are built: parameter counts and FLOPs come
from the backbone built on the meta device, the latent grid and codebook size from the
tokenizer's published architecture (or its config for the suite's VQ-VAE).

Cost model: training FLOPs per step = FLOPs of one forward + backward pass of the backbone on
the global batch (``benchmarks.training.flops.model_flops``); sampling FLOPs per image = forward FLOPs x
NFE. GPU time = FLOPs / (peak x utilisation), printed in GPU-seconds, -minutes or -hours and
FLOPs in GFLOP to EFLOP, whichever keeps the largest entry at least 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.config import BenchmarkConfig
from benchmarks.training.flops import meta_parameter_count, model_flops
from methods import get_method


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
class LatentShape:
    codebook_size: int
    code_dim: int
    grid: tuple[int, int]
    num_classes: int


def latent_shape(cfg: BenchmarkConfig) -> LatentShape:
    """K, d, (h, w) and the class count implied by the config, without reading any data."""
    tok = cfg.tokenizer
    if tok.kind == "vqvae":
        k, d, f = tok.vqvae.codebook_size, tok.vqvae.code_dim, tok.vqvae.downsample
    else:
        from backbones.pretrained import get_spec

        spec = get_spec(tok.kind)
        k, d, f = spec.codebook_size, spec.code_dim, spec.downsample
    classes = cfg.data.num_classes or (10 if cfg.data.dataset == "mnist5k" else None)
    if classes is None:
        raise ValueError("--dry-run needs data.num_classes for this dataset (e.g. --set data.num_classes=1000)")
    side = cfg.data.image_size // f
    return LatentShape(k, d, (side, side), classes)


def checkpoint_steps(cfg: BenchmarkConfig) -> list[int]:
    t = cfg.train
    steps = list(range(t.checkpoint_every, t.iterations + 1, t.checkpoint_every))
    return steps if steps and steps[-1] == t.iterations else steps + [t.iterations]


def evaluation_cells(cfg: BenchmarkConfig, method: str, steps: list[int]) -> list[tuple[int, int, float, float, int]]:
    """(checkpoint step, sampler steps, temperature, cfg scale, samples) for every cell a job runs."""
    ev = cfg.eval
    if not ev.enabled:
        return []
    tau = ev.method_temperature.get(method, 1.0)
    sweep_at = ev.sweep_at if ev.sweep_at is not None else steps[-1]
    cells = []
    for step in steps:
        last = step == steps[-1]
        here = [(c.steps, c.temperature if c.temperature is not None else tau, c.cfg_scale, c.num_samples or ev.num_samples)
                for c in ev.cells if c.at == "every" or last]
        if step == sweep_at:
            here += [(ev.sweep_steps, t, 1.0, ev.sweep_samples or ev.num_samples) for t in ev.temperatures]
        cells += [(step, *cell) for cell in dict.fromkeys(here)]
    return cells


def dry_run(cfg: BenchmarkConfig, methods: list[str], seeds: list[int], *, peak_tflops: float, utilisation: float) -> str:
    shape = latent_shape(cfg)
    steps = checkpoint_steps(cfg)
    lines = [f"config {cfg.name}: {cfg.description}".rstrip(": "),
             f"backbone {cfg.backbone}; tokenizer {cfg.tokenizer.kind} (K={shape.codebook_size}, d={shape.code_dim}); "
             f"latent grid {shape.grid[0]}x{shape.grid[1]}; {shape.num_classes} classes",
             f"jobs: {len(methods)} methods x {len(seeds)} seeds = {len(methods) * len(seeds)} "
             f"(methods {', '.join(methods)}; seeds {', '.join(map(str, seeds))})",
             f"training: {cfg.train.iterations:,} iterations x global batch {cfg.train.batch_size}; "
             f"{len(steps)} checkpoints: {', '.join(f'{s:,}' for s in steps[:6])}{' ...' if len(steps) > 6 else ''}",
             f"cost at {utilisation:.0%} of {peak_tflops:g} TFLOP/s per GPU:", ""]
    rows = []
    for name in methods:
        io = get_method(name)(torch.empty(shape.codebook_size, shape.code_dim, device="meta")).backbone_io()
        params = meta_parameter_count(cfg.backbone, io, shape.grid, shape.num_classes)
        step_flops = model_flops(cfg.backbone, io, shape.grid, shape.num_classes, batch=1) * cfg.train.batch_size
        forward = model_flops(cfg.backbone, io, shape.grid, shape.num_classes, batch=1, backward=False)
        cells = evaluation_cells(cfg, name, steps)
        eval_flops = sum(forward * n_steps * (1 if w == 1.0 else 2) * n for _, n_steps, _, w, n in cells)
        train_flops = step_flops * cfg.train.iterations
        gpu_s = (train_flops + eval_flops) / (peak_tflops * 1e12 * utilisation) * len(seeds)
        rows.append((name, params, step_flops, train_flops, len(cells), eval_flops, gpu_s))
    flop_unit, flop_scale = unit_for([max(r[3], r[5]) for r in rows], FLOP_UNITS)
    time_unit, time_scale = unit_for([r[6] for r in rows], GPU_TIME_UNITS)
    header = (f"{'method':<14}{'params':>14}{'train GFLOP/step':>18}{f'train {flop_unit}':>14}{'eval cells':>12}"
              f"{f'eval {flop_unit}':>13}{time_unit:>13}")
    lines += [header, "-" * len(header)]
    for name, params, step_flops, train_flops, n_cells, eval_flops, gpu_s in rows:
        lines.append(f"{name:<14}{params / 1e6:>13.1f}M{step_flops / 1e9:>18,.1f}{number(train_flops / flop_scale):>14}"
                     f"{n_cells:>12}{number(eval_flops / flop_scale):>13}{number(gpu_s / time_scale):>13}")
    total_s = sum(r[6] for r in rows)
    total_unit, total_scale = unit_for([total_s], GPU_TIME_UNITS)
    lines += ["", f"total: {number(total_s / total_scale)} {total_unit} for {len(methods) * len(seeds)} jobs "
              f"(per seed and method above: training + evaluation sampling; FID feature extraction not included)"]
    first = evaluation_cells(cfg, methods[0], steps) if methods else []
    if first:
        lines.append(f"evaluation cells per job ({methods[0]}): "
                     + "; ".join(f"step {s:,}: {n} steps, tau {t:g}, cfg {w:g}, {k:,} samples" for s, n, t, w, k in first[-4:])
                     + (f" (last 4 of {len(first)})" if len(first) > 4 else ""))
    return "\n".join(lines)
