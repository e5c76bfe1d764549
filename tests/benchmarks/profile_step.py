"""Measure one training configuration in this (fresh) process and print a JSON line.

    python -m tests.benchmarks.profile_step --method purr --head fused --workload S2-16k --batch 32

Reports: seconds per step (median of ``--steps`` timed steps after one warm-up), the model's
FLOPs per step and the achieved FLOP/s, the peak live-tensor memory of a steady-state step
(``benchmarks.utilisation.TensorMemory``; ``torch.cuda.max_memory_allocated`` on CUDA) and the
process's peak resident set size (``ru_maxrss``, which includes Python, torch and the model
setup). Run one process per measurement: ``ru_maxrss`` never goes down.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from tests.benchmarks.workloads import HEADS, WORKLOADS, TrainStep, label


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(method: str, head: str, workload_name: str, batch: int | None, steps: int, device: str) -> dict:
    workload = WORKLOADS[workload_name]
    workload = workload if batch is None else workload.with_batch(batch)
    rss_start = rss_mib()
    run = TrainStep(method, workload, head, device=device)
    run.step()  # warm-up; creates the optimizer state
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run.step()
        times.append(time.perf_counter() - start)
    peak = run.peak_memory()
    seconds = statistics.median(times)
    return {"method": method, "head": head, "label": label(method, head), "workload": workload.name,
            "backbone": workload.backbone, "codes": workload.codes, "grid": list(workload.grid),
            "batch": workload.batch, "device": device, "threads": torch.get_num_threads(), "params": run.params,
            "flops_per_step": run.flops, "seconds_per_step": seconds, "step_times": times,
            "achieved_flops": run.flops / seconds, "peak_tensor_mib": peak / 2 ** 20, "rss_peak_mib": rss_mib(), "rss_at_start_mib": rss_start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--head", choices=HEADS, default="fused")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="default")
    parser.add_argument("--batch", type=int, default=None, help="override the workload's batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.method, args.head, args.workload, args.batch, args.steps, args.device)), flush=True)


if __name__ == "__main__":
    main()
