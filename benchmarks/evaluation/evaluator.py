"""Evaluation along training: sample with the EMA weights, decode, score with torch-fidelity.

At every checkpoint the evaluator runs the config's cells (``eval.cells`` with ``at: every``,
plus ``at: last`` cells and the temperature sweep at the chosen checkpoint). A cell samples
``eval.num_samples`` images, class-balanced (label i mod N), decodes them with the tokenizer and
compares them with the reference statistics. Each cell becomes one row of ``metrics.csv``;
cells already present are skipped, so a rerun after a crash redoes only what is missing.
Purrception's posterior entropy along t goes to ``traces.csv``; a PNG grid per cell goes to
``samples/<method>/seed<k>/``. The tokenizer's own reconstruction metrics (the floor no method
can beat) are computed once per run into ``tokenizer_floor.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from benchmarks.evaluation import fidelity
from benchmarks.storage.atomic import save_json, save_with
from benchmarks.config import BenchmarkConfig
from benchmarks.data.images import to_uint8
from benchmarks.data.latents import LatentSpace
from benchmarks.storage.manifest import git_commit
from benchmarks.storage.results import TRACE_COLUMNS, TRACE_KEY, append_rows, cell_key, done_cells
from benchmarks.training.trainer import CheckpointEvent, device_autocast

SAMPLER = "euler"


@dataclass(frozen=True)
class Cell:
    steps: int
    temperature: float
    cfg_scale: float
    num_samples: int

    @property
    def tag(self) -> str:
        return f"steps{self.steps}_tau{self.temperature:g}_cfg{self.cfg_scale:g}_n{self.num_samples}"


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., N-1, 0, 1, ...: every class gets n // N or n // N + 1 samples."""
    return torch.arange(n) % num_classes


def cell_seed(seed: int, step: int, cell: Cell) -> int:
    """A fixed sampling seed per (training seed, checkpoint, cell): reruns give identical images."""
    return (seed * 1_000_003 + step * 7919 + cell.steps * 131
            + int(round(cell.temperature * 1000)) * 17 + int(round(cell.cfg_scale * 1000))) % (2**63 - 1)


class Evaluator:
    """Called by the trainer after each checkpoint (see ``benchmarks.training.trainer.CheckpointEvent``)."""

    def __init__(self, cfg: BenchmarkConfig, latents: LatentSpace, run_dir: str | Path, *, progress: bool = True):
        self.cfg, self.latents, self.run_dir, self.progress = cfg, latents, Path(run_dir), progress
        self.metrics_path = self.run_dir / "metrics.csv"
        self._extractor = None
        self._reference = None
        self.commit = git_commit()

    # ------------------------------------------------------------------ reference side
    def extractor(self):
        if self._extractor is None:
            name = self.cfg.eval.feature_extractor
            if name == "auto":
                name = "mnist-cnn" if self.cfg.data.dataset == "mnist5k" else "inception-v3-compat"
            self._extractor = fidelity.get_extractor(name, self.cfg.eval.inception_weights)
        return self._extractor

    def reference(self):
        if self._reference is None:
            ref = self.cfg.data.reference
            if ref is not None and ref.endswith(".npz"):
                self._reference = fidelity.reference_from_npz(ref, self.extractor(), progress=self.progress)
            else:
                images = self.latents.images
                if ref is not None:
                    from benchmarks.data.images import ImageFolder

                    images = ImageFolder(ref, self.cfg.data.image_size, mode="L" if self.latents.tokenizer.in_channels == 1 else "RGB")
                if images is None:
                    raise ValueError("evaluation needs reference images: data.dataset is 'shards', so set "
                                     "data.reference to an image folder or an ADM-style .npz reference batch")
                hint = self.cfg.data.dataset if ref is None else Path(ref).name
                self._reference = fidelity.reference_from_images(images, self.extractor(), hint, progress=self.progress)
        return self._reference

    def tokenizer_floor(self) -> dict:
        """Metrics of the tokenizer's reconstructions of the reference images (computed once)."""
        path = self.run_dir / "tokenizer_floor.json"
        if path.exists():
            return json.loads(path.read_text())
        if self.latents.images is None:
            return {}
        start = time.perf_counter()
        n = min(self.cfg.eval.num_samples, len(self.latents.images))
        indices = np.linspace(0, len(self.latents.images) - 1, n).astype(int)
        subset = torch.utils.data.Subset(self.latents.images, indices)
        metrics = fidelity.reconstruction_metrics(self.latents.tokenizer, subset, self.reference(), self.extractor(),
                                                  labels=image_labels(self.latents.images)[indices], progress=self.progress, kid_subsets=self.cfg.eval.kid_subsets)
        floor = {**metrics, "n_samples": n, "tokenizer": self.latents.info.get("tokenizer"),
                 "feature_extractor": self.extractor().id, "ref_stats": self.reference().id,
                 "eval_wall_s": round(time.perf_counter() - start, 2)}
        save_json(floor, path)
        return floor

    # ------------------------------------------------------------------ cells
    def cells(self, event: CheckpointEvent) -> list[Cell]:
        ev = self.cfg.eval
        default_tau = ev.method_temperature.get(event.method.name, 1.0)
        cells = [Cell(c.steps, c.temperature if c.temperature is not None else default_tau, c.cfg_scale,
                      c.num_samples or ev.num_samples)
                 for c in ev.cells if c.at == "every" or (c.at == "last" and event.is_last)]
        sweep_here = event.step == ev.sweep_at if ev.sweep_at is not None else event.is_last
        if sweep_here:
            cells += [Cell(ev.sweep_steps, tau, 1.0, ev.sweep_samples or ev.num_samples) for tau in ev.temperatures]
        return list(dict.fromkeys(cells))

    def row(self, event: CheckpointEvent, cell: Cell, nfe: int) -> dict:
        return {"run": self.run_dir.name, "method": event.method.name, "seed": event.seed, "step": event.step,
                "images_seen": event.images_seen, "train_flops": event.train_flops,
                "train_wall_s": round(event.train_wall_s, 3), "backbone": self.cfg.backbone, "params": event.params,
                "tokenizer": self.latents.info.get("tokenizer"), "sampler": SAMPLER, "steps": cell.steps, "nfe": nfe,
                "temperature": cell.temperature, "cfg_scale": cell.cfg_scale, "n_samples": cell.num_samples,
                "feature_extractor": self.extractor().id, "ref_stats": self.reference().id,
                "git_commit": self.commit}

    @torch.no_grad()
    def generate(self, event: CheckpointEvent, cell: Cell) -> tuple[torch.Tensor, int, dict[str, list[float]]]:
        """Sample and decode ``num_samples`` images: uint8 (n, C, H, W), NFE, mean trace."""
        ev, device = self.cfg.eval, event.device
        labels = balanced_labels(cell.num_samples, self.latents.num_classes)
        generator = torch.Generator(device=device).manual_seed(cell_seed(event.seed, event.step, cell))
        tokenizer = self.latents.tokenizer.to(device)
        images, traces, nfe = [], [], 0
        batches = labels.split(ev.batch_size)
        for batch in tqdm(batches, desc=f"sample {event.method.name} step {event.step} {cell.tag}",
                          disable=not self.progress, leave=False, dynamic_ncols=True):
            with device_autocast(device):
                out = event.method.sample(event.ema, batch.to(device), self.latents.shards.grid, steps=cell.steps,
                                          temperature=cell.temperature, cfg_scale=cell.cfg_scale, generator=generator)
            images.append(to_uint8(tokenizer.decode(out.codes).float()).cpu())
            traces.append((len(batch), out.trace))
            nfe = out.nfe
        return torch.cat(images), nfe, mean_trace(traces)

    def save_grid(self, images: torch.Tensor, event: CheckpointEvent, cell: Cell) -> Path:
        n = min(self.cfg.eval.grid_samples, len(images))
        per_row = self.latents.num_classes if self.latents.num_classes <= 16 else 8
        grid = make_grid(images[:n].float() / 255.0, nrow=per_row, padding=2, pad_value=1.0)
        path = self.run_dir / "samples" / event.method.name / f"seed{event.seed}" / f"step{event.step:09d}_{cell.tag}.png"
        save_with(lambda tmp: save_image(grid, tmp, format="png"), path)
        return path

    def __call__(self, event: CheckpointEvent) -> None:
        self.tokenizer_floor()
        done = done_cells(self.metrics_path)
        for cell in self.cells(event):
            row = self.row(event, cell, nfe=0)
            if cell_key(row) in done:
                continue
            start = time.perf_counter()
            images, nfe, trace = self.generate(event, cell)
            self.save_grid(images, event, cell)
            metrics = fidelity.compute_metrics(images, self.reference(), self.extractor(), device=event.device,
                                               labels=balanced_labels(cell.num_samples, self.latents.num_classes),
                                               progress=self.progress, kid_subsets=self.cfg.eval.kid_subsets)
            entropy = float(np.mean(trace["entropy"])) if trace.get("entropy") else float("nan")
            row.update(nfe=nfe, entropy=entropy, eval_wall_s=round(time.perf_counter() - start, 3),
                       **{k: metrics.get(k, float("nan")) for k in ("fid", "kid_mean", "kid_std", "precision", "recall", "isc",
                                                                      "class_accuracy")})
            if trace.get("entropy"):
                append_rows(self.run_dir / "traces.csv",
                            [{"method": event.method.name, "seed": event.seed, "step": event.step, "steps": cell.steps,
                              "temperature": cell.temperature, "cfg_scale": cell.cfg_scale, "t": t, "entropy": h}
                             for t, h in zip(trace["t"], trace["entropy"])], TRACE_COLUMNS, TRACE_KEY)
            append_rows(self.metrics_path, [row])
            if self.progress:
                tqdm.write(f"  {event.method.name} seed {event.seed} step {event.step} {cell.tag}: FID {row['fid']:.3f}")


def image_labels(images) -> np.ndarray:
    """The labels (N,) of a reference image set: an ``ArrayImages`` (``.labels``) or an
    ``ImageFolder`` (``.samples``), without reading any image."""
    if hasattr(images, "labels"):
        return np.asarray(images.labels)
    return np.asarray([label for _, label in images.samples])


def mean_trace(traces: list[tuple[int, dict[str, list[float]]]]) -> dict[str, list[float]]:
    """Sample-weighted mean of per-batch traces (same keys and lengths in every batch)."""
    total = sum(n for n, _ in traces)
    keys = traces[0][1].keys() if traces else []
    return {k: list(np.sum([np.asarray(tr[k]) * n for n, tr in traces], axis=0) / total) for k in keys}
