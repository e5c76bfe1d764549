"""Evaluation along training: sample with the EMA weights, decode, score with torch-fidelity.

At every checkpoint the evaluator runs the config's cells (``eval.cells`` with ``at: every``,
plus ``at: last`` cells and the temperature sweep at the chosen checkpoint). A cell samples
``eval.num_samples`` images, class-balanced (label i mod N), each from its own seed
(``benchmarks.evaluation.sampling``), decodes them with the tokenizer and compares them with the
reference statistics. With several data-parallel ranks every rank samples and extracts features
of its block of each cell; rank 0 gathers the features, computes the metrics and writes the
results, so the metrics do not depend on the number of ranks. Each cell becomes one row of ``metrics.csv``;
cells already present are skipped, so a rerun after a crash redoes only what is missing.
Purrception's posterior entropy along t goes to ``traces.csv``; a PNG grid per cell, with a
sidecar describing it, goes to ``samples/<method>/seed<k>/`` (``benchmarks.storage.run_dir``).
The tokenizer's own reconstruction metrics (the floor no method can beat) are computed once per
run into ``tokenizer_floor.json``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from benchmarks.core.config import BenchmarkConfig
from benchmarks.core.distributed import DistEnv
from benchmarks.data.latents import LatentSpace
from benchmarks.evaluation import fidelity
from benchmarks.evaluation.metrics import metric_columns
from benchmarks.evaluation.sampling import (
    Samples,
    balanced_labels,
    mean_trace,
    sample_images,
    sample_seeds,
    shard_range,
)
from benchmarks.storage.atomic import save_json, save_with
from benchmarks.storage.manifest import git_commit
from benchmarks.storage.results import TRACE_COLUMNS, TRACE_KEY, append_rows, cell_key, done_cells, metrics_csv_columns
from benchmarks.storage.run_dir import GridLayout, RunDir, SampleGrid, write_sidecar
from benchmarks.training.trainer import CheckpointEvent
from methods.sampling import build_sampler

EULER = "euler"


@dataclass(frozen=True)
class Cell:
    """One evaluation setting: the sampler (its canonical label, ``methods.sampling.build_sampler``),
    its steps, the temperature, the CFG scale and the number of samples."""

    steps: int
    temperature: float
    cfg_scale: float
    num_samples: int
    sampler: str = EULER

    @property
    def tag(self) -> str:
        """The cell in file names: ``steps20_tau0.9_cfg1_n500``, prefixed by the sampler's label
        (its punctuation as ``-``) for any sampler but Euler, e.g. ``heun_steps8_...``."""
        prefix = "" if self.sampler == EULER else re.sub(r"[^A-Za-z0-9.]+", "-", self.sampler).strip("-") + "_"
        return f"{prefix}steps{self.steps}_tau{self.temperature:g}_cfg{self.cfg_scale:g}_n{self.num_samples}"


def cell_seed(seed: int, step: int, cell: Cell) -> int:
    """A fixed sampling seed per (training seed, checkpoint, cell): reruns give identical images.
    Sample i of the cell is drawn with ``sample_seeds(cell_seed(...), [i])``. A sampler other than
    Euler adds a hash of its label, so two samplers at equal steps draw independent noise (Euler
    cells keep the seeds they had before samplers were an axis)."""
    sampler = 0 if cell.sampler == EULER else zlib.crc32(cell.sampler.encode()) * 104_729
    return (
        seed * 1_000_003
        + step * 7919
        + cell.steps * 131
        + int(round(cell.temperature * 1000)) * 17
        + int(round(cell.cfg_scale * 1000))
        + sampler
    ) % (2**63 - 1)


class Evaluator:
    """Called by the trainer after each checkpoint (see ``benchmarks.training.trainer.CheckpointEvent``)."""

    def __init__(
        self,
        cfg: BenchmarkConfig,
        latents: LatentSpace,
        run_dir: str | Path,
        *,
        progress: bool = True,
        dist: DistEnv | None = None,
    ):
        self.cfg, self.latents, self.run = cfg, latents, RunDir(run_dir)
        self.dist = dist or DistEnv()
        self.progress = progress and self.dist.is_main
        self._extractor = None
        self._reference = None
        self.commit = git_commit()

    # ------------------------------------------------------------------ reference side
    def extractor(self):
        if self._extractor is None:
            self._extractor = extractor_for(self.cfg)
        return self._extractor

    def reference(self):
        if self._reference is None:
            ref = self.cfg.data.reference
            if ref is not None and ref.endswith(".npz"):
                self._reference = fidelity.reference_from_npz(ref, self.extractor(), progress=self.progress)
            else:
                images = self.latents.images
                if ref is None:
                    from benchmarks.data.datasets import get_dataset

                    own = get_dataset(self.cfg.data.dataset).reference(
                        self.cfg.data, self.latents.tokenizer.in_channels
                    )
                    images = images if own is None else own
                else:
                    from benchmarks.data.images import ImageFolder

                    images = ImageFolder(
                        ref, self.cfg.data.image_size, mode="L" if self.latents.tokenizer.in_channels == 1 else "RGB"
                    )
                if images is None:
                    raise ValueError(
                        f"evaluation needs reference images: data.dataset {self.cfg.data.dataset!r} has "
                        "none, so set data.reference to an image folder or an ADM-style .npz reference batch"
                    )
                hint = self.cfg.data.dataset if ref is None else Path(ref).name
                self._reference = fidelity.reference_from_images(images, self.extractor(), hint, progress=self.progress)
        return self._reference

    def tokenizer_floor(self) -> dict:
        """Metrics of the tokenizer's reconstructions of ``n = min(eval.num_samples, N)`` reference
        images, evenly spaced over the N (computed once per run into ``tokenizer_floor.json``).

        A collective with several ranks (every rank calls it): rank r reconstructs and extracts
        features of its block ``shard_range(n, r, world)`` of the n images, rank 0 gathers the
        features (concatenated in rank order, so in image order) and the squared errors, and
        computes the metrics and PSNR = 10 log10(255^2 / MSE) with MSE = sum of squared errors /
        pixel count over all n images: the same numbers for any world size. Returns the floor on
        rank 0 and {} on the other ranks."""
        path = self.run.floor
        exists = self.dist.broadcast(path.exists() if self.dist.is_main else None)
        if exists:
            return json.loads(path.read_text()) if self.dist.is_main else {}
        if self.latents.images is None:
            return {}
        start = time.perf_counter()
        n = min(self.cfg.eval.num_samples, len(self.latents.images))
        indices = np.linspace(0, len(self.latents.images) - 1, n).astype(int)
        shards = self.dist.gather(self.floor_shard(indices))
        if shards is None:
            return {}
        floor = {
            **self.floor_metrics(shards, image_labels(self.latents.images)[indices]),
            "n_samples": n,
            "tokenizer": self.latents.info.get("tokenizer"),
            "feature_extractor": self.extractor().id,
            "ref_stats": self.reference().id,
            "eval_wall_s": round(time.perf_counter() - start, 2),
        }
        save_json(floor, path)
        return floor

    def floor_shard(self, indices: np.ndarray) -> dict:
        """This rank's part of the floor: features {layer: (m, D)} of the reconstructions of its
        block of ``indices`` (m images), their summed squared error (uint8 units) and pixel count."""
        block = shard_range(len(indices), self.dist.rank, self.dist.world_size)
        if not len(block):  # more ranks than images
            return {"features": {}, "sq_err": 0.0, "pixels": 0}
        subset = torch.utils.data.Subset(self.latents.images, indices[block.start : block.stop])
        recon, mse = fidelity.reconstruct(self.latents.tokenizer, subset)
        features = fidelity.extract_features(recon, self.extractor(), progress=self.progress)
        return {"features": features, "sq_err": mse * recon.numel(), "pixels": recon.numel()}

    def floor_metrics(self, shards: list[dict], labels: np.ndarray) -> dict:
        """Rank 0: the floor's metrics from every rank's ``floor_shard`` (in rank order)."""
        metrics = self.score(shards, labels)
        mse = sum(s["sq_err"] for s in shards) / sum(s["pixels"] for s in shards)
        metrics["psnr"] = 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf
        return metrics

    # ------------------------------------------------------------------ cells
    def cells(self, event: CheckpointEvent) -> list[Cell]:
        return checkpoint_cells(self.cfg, event.method.name, event.step, event.is_last)

    def row(self, event: CheckpointEvent, cell: Cell, nfe: int) -> dict:
        return {
            "run": self.run.path.name,
            "method": event.method.name,
            "seed": event.seed,
            "step": event.step,
            "images_seen": event.images_seen,
            "train_flops": event.train_flops,
            "train_wall_s": round(event.train_wall_s, 3),
            "backbone": self.cfg.backbone,
            "params": event.params,
            "tokenizer": self.latents.info.get("tokenizer"),
            "sampler": cell.sampler,
            "steps": cell.steps,
            "nfe": nfe,
            "temperature": cell.temperature,
            "cfg_scale": cell.cfg_scale,
            "n_samples": cell.num_samples,
            "feature_extractor": self.extractor().id,
            "ref_stats": self.reference().id,
            "git_commit": self.commit,
        }

    @torch.no_grad()
    def generate(self, event: CheckpointEvent, cell: Cell) -> Samples:
        """Sample and decode this rank's block of the cell's ``num_samples`` images."""
        ev = self.cfg.eval
        block = shard_range(cell.num_samples, self.dist.rank, self.dist.world_size)
        labels = balanced_labels(cell.num_samples, self.latents.num_classes)[block.start : block.stop]
        return sample_images(
            event.method,
            event.ema,
            self.latents.tokenizer.to(event.device),
            self.latents.shards.grid,
            labels,
            sample_seeds(cell_seed(event.seed, event.step, cell), block),
            steps=cell.steps,
            temperature=cell.temperature,
            cfg_scale=cell.cfg_scale,
            batch_size=ev.batch_size,
            decode_batch_size=ev.decode_batch_size,
            device=event.device,
            sampler=cell.sampler,
            progress=self.progress,
            desc=f"sample {event.method.name} seed {event.seed} step {event.step} {cell.tag}",
        )

    def shard_result(self, event: CheckpointEvent, cell: Cell, samples: Samples) -> dict:
        """What this rank sends to rank 0 for a cell: features of its images, the grid's share of
        its images (global index < ``eval.grid_samples``), its traces and NFE."""
        start = shard_range(cell.num_samples, self.dist.rank, self.dist.world_size).start
        features = (
            fidelity.extract_features(samples.images, self.extractor(), device=event.device, progress=self.progress)
            if len(samples.images)
            else {}
        )  # a rank can have no samples when there are more ranks
        grid = samples.images[: max(0, self.cfg.eval.grid_samples - start)]
        return {
            "features": features,
            "grid": grid,
            "traces": samples.traces,
            "nfe_total": samples.nfe_total,
            "sample_wall_s": samples.sample_wall_s,
            "sample_cpu_s": samples.sample_cpu_s,
        }

    def save_grid(self, images: torch.Tensor, event: CheckpointEvent, cell: Cell) -> Path:
        """Write the PNG grid of the cell's first ``eval.grid_samples`` images, a column per class
        (8 columns beyond 16 classes), then its sidecar (``benchmarks.storage.run_dir``)."""
        n = min(self.cfg.eval.grid_samples, len(images))
        classes = self.latents.num_classes
        layout = GridLayout.tiled(
            balanced_labels(n, classes).tolist(), per_row=classes if classes <= 16 else 8, tile=images.shape[-1]
        )
        grid = make_grid(images[:n].float() / 255.0, nrow=layout.columns, padding=layout.padding, pad_value=1.0)
        path = self.run.job(event.method.name, event.seed).grid(event.step, cell.tag)
        save_with(lambda tmp: save_image(grid, tmp, format="png"), path)
        write_sidecar(
            SampleGrid(
                path,
                event.method.name,
                event.seed,
                event.step,
                cell.sampler,
                cell.steps,
                cell.temperature,
                cell.cfg_scale,
                cell.num_samples,
                layout,
            )
        )
        return path

    def todo(self, event: CheckpointEvent) -> list[Cell]:
        """The cells of this checkpoint not yet in ``metrics.csv`` (rank 0 reads; all ranks get its list)."""
        todo = None
        self.tokenizer_floor()  # a collective: every rank reconstructs its block of the floor's images
        if self.dist.is_main:
            done = done_cells(self.run.metrics)
            todo = [cell for cell in self.cells(event) if cell_key(self.row(event, cell, nfe=0)) not in done]
        return self.dist.broadcast(todo)

    def __call__(self, event: CheckpointEvent) -> None:
        for cell in self.todo(event):
            start = time.perf_counter()
            shards = self.dist.gather(self.shard_result(event, cell, self.generate(event, cell)))
            if shards is not None:
                self.record(event, cell, shards, start)

    def score(self, shards: list[dict], labels) -> dict[str, float]:
        """Rank 0: the configured metrics of the images whose features the ranks' ``shards`` hold
        ({"features": {layer: (m, D)}}, in rank order; a rank without images sends none), against
        the run's reference; ``labels`` (N,): the class each image was made for."""
        parts = [s["features"] for s in shards if s["features"]]
        features = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return fidelity.metrics_from_features(
            features,
            self.reference(),
            self.extractor(),
            labels=labels,
            kid_subsets=self.cfg.eval.kid_subsets,
            metrics=self.cfg.eval.metrics,
        )

    def record(self, event: CheckpointEvent, cell: Cell, shards: list[dict], start: float) -> None:
        """Rank 0: metrics of the gathered features, the grid, the trace and the ``metrics.csv`` row."""
        self.save_grid(torch.cat([s["grid"] for s in shards if len(s["grid"])]), event, cell)
        labels = balanced_labels(cell.num_samples, self.latents.num_classes)  # rank blocks are in order
        metrics = self.score(shards, labels)
        trace = mean_trace([t for s in shards for t in s["traces"]])
        entropy = float(np.mean(trace["entropy"])) if trace.get("entropy") else float("nan")
        row = self.row(event, cell, nfe=mean_nfe(sum(s["nfe_total"] for s in shards), cell.num_samples))
        row.update(
            sample_s_per_image=sum(s["sample_wall_s"] for s in shards) / cell.num_samples,
            sample_cpu_s_per_image=sum(s["sample_cpu_s"] for s in shards) / cell.num_samples,
            entropy=entropy,
            eval_wall_s=round(time.perf_counter() - start, 3),
            **{k: metrics.get(k, float("nan")) for k in metric_columns()},
        )
        if trace.get("entropy"):
            append_rows(
                self.run.traces,
                [
                    {
                        "method": event.method.name,
                        "seed": event.seed,
                        "step": event.step,
                        "sampler": cell.sampler,
                        "steps": cell.steps,
                        "temperature": cell.temperature,
                        "cfg_scale": cell.cfg_scale,
                        "t": t,
                        "entropy": h,
                    }
                    for t, h in zip(trace["t"], trace["entropy"])
                ],
                TRACE_COLUMNS,
                TRACE_KEY,
            )
        append_rows(self.run.metrics, [row], metrics_csv_columns(metric_columns()))
        line = f"  {event.method.name} seed {event.seed} step {event.step} {cell.tag}: FID {row['fid']:.3f}"
        if np.isfinite(row["class_accuracy"]):
            line += f", class accuracy {row['class_accuracy']:.3f}"
        if self.progress:
            tqdm.write(line)
        else:
            print(line, file=sys.stderr, flush=True)


def checkpoint_cells(cfg: BenchmarkConfig, method: str, step: int, is_last: bool) -> list[Cell]:
    """The cells the config evaluates at a checkpoint of ``method``: ``eval.cells`` that apply to
    the method (``methods``) with ``at: every`` (and ``at: last`` at the last checkpoint), plus the
    temperature sweep at ``eval.sweep_at`` (default: the last checkpoint); each once. A cell's
    sampler is its canonical label (``methods.sampling.build_sampler``)."""
    ev = cfg.eval
    default_tau = ev.method_temperature.get(method, 1.0)
    cells = [
        Cell(
            c.steps,
            c.temperature if c.temperature is not None else default_tau,
            c.cfg_scale,
            c.num_samples or ev.num_samples,
            build_sampler(c.sampler).label,
        )
        for c in ev.cells
        if (c.at == "every" or (c.at == "last" and is_last)) and (c.methods is None or method in c.methods)
    ]
    sweep_here = step == ev.sweep_at if ev.sweep_at is not None else is_last
    if sweep_here:
        sampler = build_sampler(ev.sweep_sampler).label
        samples = ev.sweep_samples or ev.num_samples
        cells += [Cell(ev.sweep_steps, tau, 1.0, samples, sampler) for tau in ev.temperatures]
    return list(dict.fromkeys(cells))


def extractor_for(cfg: BenchmarkConfig) -> fidelity.ExtractorSpec:
    """The run's feature extractor: ``eval.feature_extractor``, or for ``auto`` the data set's
    default (``DataSet.feature_extractor``), built by its registry entry."""
    from benchmarks.data.datasets import get_dataset
    from benchmarks.evaluation.extractors import get_feature_extractor

    name = cfg.eval.feature_extractor
    if name == "auto":
        name = get_dataset(cfg.data.dataset).feature_extractor
    try:
        entry = get_feature_extractor(name)
    except KeyError as err:
        raise ValueError(f"eval.feature_extractor: {err.args[0]}") from None
    return entry.spec(cfg)


def image_labels(images) -> np.ndarray:
    """The labels (N,) of a reference image set: an ``ArrayImages`` (``.labels``) or an
    ``ImageFolder`` (``.samples``), without reading any image."""
    if hasattr(images, "labels"):
        return np.asarray(images.labels)
    return np.asarray([label for _, label in images.samples])


def mean_nfe(total: int, n: int) -> int | float:
    """NFE per sample of a cell: an integer when every sample took the same number of network
    passes (fixed-step samplers), else the mean over samples to 2 decimals (an adaptive one)."""
    mean = total / n
    return int(mean) if mean.is_integer() else round(mean, 2)
