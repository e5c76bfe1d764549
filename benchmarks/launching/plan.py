"""``--dry-run``: the job plan and its cost, from the config alone.

Nothing is read from disk and no full-size weights are built: parameter counts and FLOPs come
from the backbone built on the meta device, the latent grid and codebook size from the
tokenizer's published architecture (or its config for the suite's VQ-VAE).

Cost model: training FLOPs per step = FLOPs of one forward + backward pass of the backbone on
the global batch (``benchmarks.training.flops.model_flops``); sampling FLOPs per image = forward FLOPs x
NFE. GPU-hours = FLOPs / (peak x utilisation) / 3600, printed for training and evaluation
separately, per job (one method, one seed) and in total. Evaluation is sharded over the job's
GPUs, so its wall time is its GPU-hours / ``launcher.gpus_per_job``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.config import BenchmarkConfig
from benchmarks.training.flops import meta_parameter_count, model_flops
from methods import get_method


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
    header = (f"{'method':<14}{'params':>14}{'train GFLOP/step':>18}{'train PFLOP':>14}{'train GPU-h':>13}"
              f"{'eval cells':>12}{'eval PFLOP':>13}{'eval GPU-h':>12}")
    lines += ["per job (one method, one seed):", header, "-" * len(header)]
    gpu_hours = lambda flops: flops / (peak_tflops * 1e12 * utilisation) / 3600  # noqa: E731
    train_total = eval_total = 0.0
    for name in methods:
        io = get_method(name)(torch.empty(shape.codebook_size, shape.code_dim, device="meta")).backbone_io()
        params = meta_parameter_count(cfg.backbone, io, shape.grid, shape.num_classes)
        step_flops = model_flops(cfg.backbone, io, shape.grid, shape.num_classes, batch=1) * cfg.train.batch_size
        forward = model_flops(cfg.backbone, io, shape.grid, shape.num_classes, batch=1, backward=False)
        cells = evaluation_cells(cfg, name, steps)
        eval_flops = sum(forward * n_steps * (1 if w == 1.0 else 2) * n for _, n_steps, _, w, n in cells)
        train_flops = step_flops * cfg.train.iterations
        train_total += gpu_hours(train_flops) * len(seeds)
        eval_total += gpu_hours(eval_flops) * len(seeds)
        lines.append(f"{name:<14}{params / 1e6:>13.1f}M{step_flops / 1e9:>18,.1f}{train_flops / 1e15:>14,.1f}"
                     f"{gpu_hours(train_flops):>13,.1f}{len(cells):>12}{eval_flops / 1e15:>13,.1f}"
                     f"{gpu_hours(eval_flops):>12,.1f}")
    jobs, gpus = len(methods) * len(seeds), max(cfg.launcher.gpus_per_job, 1)
    lines += ["", f"total for {jobs} jobs: training {train_total:,.0f} GPU-hours, "
              f"evaluation {eval_total:,.0f} GPU-hours (sampling; decoding and FID feature extraction not "
              f"included), together {train_total + eval_total:,.0f} GPU-hours",
              f"evaluation is sharded over a job's {gpus} GPU(s) (launcher.gpus_per_job): about "
              f"{eval_total / max(jobs, 1) / gpus:,.1f} hours of evaluation wall time per job"]
    first = evaluation_cells(cfg, methods[0], steps) if methods else []
    if first:
        lines.append(f"evaluation cells per job ({methods[0]}): "
                     + "; ".join(f"step {s:,}: {n} steps, tau {t:g}, cfg {w:g}, {k:,} samples" for s, n, t, w, k in first[-4:])
                     + (f" (last 4 of {len(first)})" if len(first) > 4 else ""))
    return "\n".join(lines)
