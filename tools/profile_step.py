"""Measure training steps of one or more variants in this process and print one JSON line each.

    python -m tools.profile_step --workload S2-16k --batch 32 purr-fused
    python -m tools.profile_step --workload S2-16k --batch 8 --steps 4 cfm purr-fused purr-dense

A variant is a method name (its default head: fused for the categorical methods) or
``METHOD-fused`` / ``METHOD-dense``. Several variants are built side by side and timed
round-robin (one step of each per round), so on a shared machine every variant sees the same
background load and the per-round ratios stay meaningful.

Reports per variant: seconds per step (median of ``--steps`` timed steps after one warm-up) and
every step time, the model's FLOPs per step and the achieved FLOP/s, the peak live-tensor memory
of a steady-state step (``benchmarks.training.utilisation.TensorMemory``; ``torch.cuda.max_memory_allocated``
on CUDA) and, for a single variant, the process's peak resident set size (``ru_maxrss``, which
includes Python, torch and the setup; it never goes down, so use one process per measurement).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

import methods
from benchmarks.training.utilisation import process_peak_flops
from tools.workloads import HEADS, WORKLOADS, TrainStep, label


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def parse_variant(text: str) -> tuple[str, str]:
    """``purr`` -> (purr, fused); ``purr-dense`` -> (purr, dense); ``dfm-uniform`` -> (dfm-uniform, fused)."""
    names = methods.method_names()
    if text in names:
        return text, "fused"
    method, _, head = text.rpartition("-")
    if method in names and head in HEADS:
        return method, head
    raise SystemExit(
        f"unknown variant {text!r}: expected a method ({', '.join(names)}), optionally with -{' or -'.join(HEADS)}"
    )


def measure(variants: list[tuple[str, str]], workload, steps: int, device: str) -> list[dict]:
    rss_start = rss_mib()
    runs = [TrainStep(method, workload, head, device=device) for method, head in variants]
    for run in runs:
        run.step()  # warm-up; creates the optimizer state
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(steps):
        for run, record in zip(runs, times):
            start = time.perf_counter()
            run.step()
            record.append(time.perf_counter() - start)
    rows = []
    for (method, head), run, record in zip(variants, runs, times):
        seconds = statistics.median(record)
        rows.append(
            {
                "method": method,
                "head": head,
                "label": label(method, head),
                "workload": workload.name,
                "backbone": workload.backbone,
                "codes": workload.codes,
                "grid": list(workload.grid),
                "batch": workload.batch,
                "device": device,
                "threads": torch.get_num_threads(),
                "params": run.params,
                "flops_per_step": run.flops,
                "seconds_per_step": seconds,
                "step_times": record,
                "achieved_flops": run.flops / seconds,
                "peak_flops": process_peak_flops(device),
                "peak_tensor_mib": run.peak_memory() / 2**20,
                "interleaved_with": [label(*v) for v in variants if v != (method, head)],
            }
        )
    if len(runs) == 1:
        rows[0].update(rss_peak_mib=rss_mib(), rss_at_start_mib=rss_start)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="e.g. cfm purr-fused purr-dense")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="default", help="model and data sizes")
    parser.add_argument("--batch", type=int, default=None, help="override the workload's batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant after one warm-up")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.workload]
    workload = workload if args.batch is None else workload.with_batch(args.batch)
    for row in measure([parse_variant(v) for v in args.variants], workload, args.steps, args.device):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
