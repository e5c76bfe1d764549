"""Launchers: where the (method, seed) jobs of a run execute.

``local`` runs them one after another in this process, sharing the prepared latent space.
"""
from __future__ import annotations

import time
from pathlib import Path

from benchmarks.config import BenchmarkConfig
from benchmarks.jobs import latents_for, make_evaluator, run_job
from benchmarks.manifest import update_manifest


def launch(cfg: BenchmarkConfig, methods: list[str], seeds: list[int], run_dir: Path, *, progress: bool = True) -> None:
    kind = cfg.launcher.kind
    if kind == "local":
        run_local(cfg, methods, seeds, run_dir, progress=progress)
    else:
        raise NotImplementedError(f"launcher.kind {kind!r} is not available yet")


def run_local(cfg: BenchmarkConfig, methods: list[str], seeds: list[int], run_dir: Path, *, progress: bool) -> None:
    start = time.perf_counter()
    latents = latents_for(cfg, progress=progress)
    update_manifest(run_dir, {"timings": {"latents_s": round(time.perf_counter() - start, 2)},
                              "latents": latents.info})
    evaluator = make_evaluator(cfg, latents, run_dir, progress)
    for method in methods:
        for seed in seeds:
            run_job(cfg, method, seed, run_dir, latents=latents, evaluator=evaluator, progress=progress)
