"""Sampling images from a trained method, sharded across ranks, with per-sample seeds.

Sample ``i`` of a cell has label ``i mod N`` (class-balanced) and its own random stream, seeded
with ``sample_seed(cell seed, i)`` (``methods.base.SampleNoise``). Its image is therefore a
function of (checkpoint, cell, i) alone: the same for any batch size and any number of ranks,
so a cell's set of samples, and every metric of it, does not depend on the world size. Rank r of
W takes the contiguous block ``shard_range(n, r, W)`` of the indices. Used by the evaluator
and by ``python -m benchmarks.sample``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.core.device import device_autocast
from benchmarks.data.images import to_uint8
from methods.base import Method, SampleNoise


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., N-1, 0, 1, ...: every class gets n // N or n // N + 1 samples."""
    return torch.arange(n) % num_classes


def sample_seeds(seed: int, indices: range) -> list[int]:
    """The seed of each sample ``i`` in ``indices`` of a cell with seed ``seed``: numpy's
    ``SeedSequence([seed, i])`` hashed to 63 bits (well-mixed: neighbouring samples get unrelated
    streams)."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1)) for i in indices]


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous block of sample indices [0, n) that ``rank`` of ``world_size`` samples."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


@torch.no_grad()
def decode_codes(tokenizer, codes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Code grids (B, h, w) -> uint8 images (B, C, H, W) on the CPU, decoded ``batch_size`` at a
    time in float32, so the decoder's activations stay bounded whatever B is."""
    return torch.cat([to_uint8(tokenizer.decode(part).float()).cpu() for part in codes.split(batch_size)])


@dataclass
class Samples:
    """Images of a block of sample indices: uint8 (n, C, H, W) on the CPU, their labels (n,), the
    sum over the block's samples of the sampler's NFE (an adaptive sampler's NFE differs between
    batches), per-batch traces as (batch size, trace) pairs (see ``mean_trace``), and the seconds
    spent in the sampler (decoding excluded), wall and process CPU time."""

    images: torch.Tensor
    labels: torch.Tensor
    nfe_total: int = 0
    traces: list[tuple[int, dict[str, list[float]]]] = field(default_factory=list)
    sample_wall_s: float = 0.0
    sample_cpu_s: float = 0.0


def sample_images(
    method: Method,
    model,
    tokenizer,
    grid: tuple[int, int],
    labels: torch.Tensor,
    seeds: list[int],
    *,
    steps: int,
    temperature: float,
    cfg_scale: float,
    batch_size: int,
    decode_batch_size: int,
    device: torch.device,
    sampler: str = "euler",
    progress: bool = False,
    desc: str = "sample",
) -> Samples:
    """Sample with ``sampler`` (a spec, ``methods.sampling.build_sampler``) and decode one image per
    (label, seed), ``batch_size`` at a time, under the suite's sampling precision
    (``device_autocast``). The progress bar counts samples; the sampler's own time is measured
    apart from decoding, in wall and process CPU seconds (``Samples``)."""
    images, traces, nfe_total, wall, cpu = [], [], 0, 0.0, 0.0
    with tqdm(total=len(labels), desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(labels), batch_size):
            batch = labels[start : start + batch_size].to(device)
            noise = SampleNoise.per_sample(seeds[start : start + batch_size], device)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            with device_autocast(device):
                out = method.sample(
                    model,
                    batch,
                    grid,
                    steps=steps,
                    temperature=temperature,
                    cfg_scale=cfg_scale,
                    generator=noise,
                    sampler=sampler,
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = wall + time.perf_counter() - wall0, cpu + time.process_time() - cpu0
            images.append(decode_codes(tokenizer, out.codes, decode_batch_size))
            traces.append((len(batch), out.trace))
            nfe_total += out.nfe * len(batch)
            bar.update(len(batch))
    empty = torch.zeros(0, tokenizer.in_channels, 0, 0, dtype=torch.uint8)
    return Samples(torch.cat(images) if images else empty, labels.clone(), nfe_total, traces, wall, cpu)


def mean_trace(traces: list[tuple[int, dict[str, list[float]]]]) -> dict[str, list[float]]:
    """Sample-weighted mean of per-batch traces, or {} when the batches' time grids differ (an
    adaptive sampler evaluates at times of its own in each batch: no common trace exists)."""
    if len({tuple(tr.get("t", ())) for _, tr in traces}) > 1:
        return {}
    total = sum(n for n, _ in traces)
    keys = traces[0][1].keys() if traces else []
    return {k: list(np.sum([np.asarray(tr[k]) * n for n, tr in traces], axis=0) / total) for k in keys}
