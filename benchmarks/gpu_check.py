"""``python -m benchmarks.gpu_check``: what to measure on the day a GPU is lent (one GPU, under 8 minutes).

Everything runs on the paper's vq-f8 latent geometry (K = 16384 codes of d = 4, 32 x 32 grids,
1000 classes) with random codes and, unless ``--vq-f8-ckpt`` is given, randomly initialised
full-size weights: step times, memory and throughput do not depend on the weights' values.
It prints, in order:

1. DiT-XL/2 training steps of purr, cfm and dfm at batch 32 through the real ``Trainer`` (bf16
   autocast, prefetched batches, fused heads, AdamW, EMA): seconds per step, model FLOP
   utilisation against this GPU's measured bf16 matmul peak, peak memory;
2. resume: purr's checkpoint written (size, seconds: the preemption budget of
   ``launcher.signal_delay_s``), read by a fresh trainer, one more step, finite;
3. the full-size vq-f8 decoder on 50 and 100 images (float32, as the evaluator decodes): seconds
   and peak memory;
4. the nearest-code mismatch rate under bf16 autocast against float32 (must be 0);
5. purr's sampler throughput at 32 x 32 latents (the XL/2 model of 1.), and the implied duration
   of the largest evaluation cell of ``imagenet-dit-xl2-vqf8`` (sampling and decoding, one GPU).

Feed the step times to the cost plan: ``python -m benchmarks.run --config imagenet-dit-xl2-vqf8
--dry-run --step-seconds S`` (S = the step time at the per-GPU batch, for the job's GPU count).
Without a CUDA device it refuses with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backbones.tokenizers.base import nearest_codes
from backbones.tokenizers.pretrained import build_tokenizer, load_tokenizer
from benchmarks.core.config import load_config
from benchmarks.core.device import device_autocast
from benchmarks.data.latents import LatentSpace
from benchmarks.data.shards import CodeShards, write_meta, write_shard
from benchmarks.launching.plan import checkpoint_steps, evaluation_cells
from benchmarks.training.trainer import Trainer
from benchmarks.training.utilisation import measure_peak_flops

CONFIG = "imagenet-dit-xl2-vqf8"
METHODS = ("purr", "cfm", "dfm")
GRID, NUM_CLASSES, DATASET_SIZE = (32, 32), 1000, 2048
NO_GPU = (
    "benchmarks.gpu_check measures the CUDA path and needs a GPU, but torch.cuda.is_available() is False "
    "here. Run it on a GPU node, e.g. `srun --gpus=1 python -m benchmarks.gpu_check`."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32, help="training batch per GPU (default 32)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per method, after 3 warm-up steps")
    p.add_argument(
        "--vq-f8-ckpt",
        type=Path,
        default=None,
        help="the real vq-f8 checkpoint (default: random weights of the same architecture)",
    )
    p.add_argument("--sample-batch", type=int, default=125, help="images per sampler batch (default 125)")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements to this file")
    return p.parse_args(argv)


def synced_seconds(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def random_latents(tokenizer, folder: Path) -> LatentSpace:
    """Random code grids of the vq-f8 geometry as a latent space (the tokenizer supplies the codebook)."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, tokenizer.codebook_size, size=(DATASET_SIZE, *GRID))
    entry = write_shard(folder, 0, codes, np.arange(DATASET_SIZE) % NUM_CLASSES)
    write_meta(folder, grid=GRID, codebook_size=tokenizer.codebook_size, num_classes=NUM_CLASSES, shards=[entry])
    return LatentSpace(tokenizer, CodeShards(folder), None, NUM_CLASSES, 256, {"tokenizer": "vq-f8 (gpu_check)"})


def train_steps(args, latents: LatentSpace, run_dir: Path, peak: float, report: dict) -> Trainer:
    """1. step time, MFU and peak memory per method; returns purr's trainer."""
    cfg = load_config(CONFIG, [f"train.batch_size={args.batch_size}", "eval.enabled=false", "train.device=cuda"])
    kept = None
    for name in METHODS:
        torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, name, 0, run_dir, latents, progress=False)
        for _ in range(3):
            trainer.train_step()
        seconds, stats = synced_seconds(lambda: [trainer.train_step() for _ in range(args.steps)][-1])  # noqa: B023 (called at once)
        step_s = seconds / args.steps
        loss = stats["loss"].item()
        report["train"][name] = {
            "step_s": step_s,
            "mfu": trainer.flops_per_step / step_s / peak,
            "peak_gib": peak_gib(),
            "params": trainer.params,
        }
        print(
            f"  {name:<5} {trainer.params / 1e6:7.1f}M params  {step_s * 1e3:8.1f} ms/step  "
            f"MFU {trainer.flops_per_step / step_s / peak:6.1%}  peak memory {peak_gib():6.1f} GiB"
            + f"  loss {loss:.3f}"
        )
        if name == "purr":
            kept = trainer
        else:
            trainer.close_batches()
            del trainer
            torch.cuda.empty_cache()
    return kept


def resume(trainer: Trainer, latents: LatentSpace, run_dir: Path, report: dict) -> None:
    """2. write purr's checkpoint, read it back into a fresh trainer, take one step."""
    write_s, path = synced_seconds(trainer.save_checkpoint)
    size = path.stat().st_size
    fresh = Trainer(trainer.cfg, "purr", 0, run_dir, latents, progress=False)
    read_s, _ = synced_seconds(lambda: fresh.load_checkpoint(path))
    same = fresh.step == trainer.step and torch.equal(fresh.data_state, trainer.data_state)
    stats = fresh.train_step()
    finite = bool(torch.isfinite(stats["loss"]).item() and torch.isfinite(stats["grad_norm"]).item())
    ok = same and finite
    report["resume"] = {"ok": ok, "checkpoint_gb": size / 1e9, "write_s": write_s, "read_s": read_s}
    print(
        f"  checkpoint {size / 1e9:.1f} GB written in {write_s:.1f} s ({size / 1e6 / write_s:.0f} MB/s), "
        f"read in {read_s:.1f} s; resumed step {fresh.step}, next step finite: {'ok' if ok else 'FAILED'}"
    )
    fresh.close_batches()
    path.unlink()


def decode(tokenizer, report: dict) -> float:
    """3. decode 50 and 100 images; returns seconds per image at 100."""
    per_image = math.nan
    for n in (50, 100):
        codes = torch.randint(0, tokenizer.codebook_size, (n, *GRID), device="cuda")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            tokenizer.decode(codes[:2])  # warm-up
            seconds, images = synced_seconds(lambda: tokenizer.decode(codes))  # noqa: B023 (called at once)
        report["decode"][n] = {"seconds": seconds, "peak_gib": peak_gib()}
        print(f"  {n:>3} images -> {tuple(images.shape[1:])}: {seconds:6.2f} s, peak memory {peak_gib():6.1f} GiB")
        per_image = seconds / n
        del images
    return per_image


def nearest_code_mismatch(report: dict) -> None:
    """4. bf16 autocast around the search must not change a code."""
    gen = torch.Generator("cuda").manual_seed(0)
    codebook = torch.randn(16384, 4, device="cuda", generator=gen)
    true = torch.randint(0, 16384, (64, *GRID), device="cuda", generator=gen)
    z = codebook[true].permute(0, 3, 1, 2)
    z = z + 0.01 * z.abs().mean() * torch.randn(z.shape, device="cuda", generator=gen)
    want = nearest_codes(z, codebook, normalized=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = nearest_codes(z, codebook, normalized=False)
    rate = (got != want).float().mean().item()
    report["nearest_code_mismatch"] = rate
    print(f"  mismatch rate under bf16 autocast: {rate:.4%} ({'ok' if rate == 0 else 'FAILED: must be 0'})")


def sampler(trainer: Trainer, args, decode_s_per_image: float, report: dict) -> None:
    """5. purr's sampler throughput and the largest evaluation cell of the paper config."""
    labels = torch.arange(args.sample_batch, device="cuda") % NUM_CLASSES
    gen = torch.Generator("cuda").manual_seed(0)
    steps = 10

    def run():
        with device_autocast(trainer.device):
            return trainer.method.sample(trainer.ema, labels, GRID, steps=steps, temperature=0.9, generator=gen)

    run()  # warm-up
    seconds, _ = synced_seconds(run)
    evaluations_per_s = args.sample_batch * steps / seconds  # image x network evaluations per second
    paper = load_config(CONFIG)
    cells = evaluation_cells(paper, "purr", checkpoint_steps(paper))
    step, n_steps, tau, w, n = max(cells, key=lambda c: c[1] * (1 if c[3] == 1.0 else 2) * c[4])
    nfe = n_steps * (1 if w == 1.0 else 2)
    hours = (n * nfe / evaluations_per_s + n * decode_s_per_image) / 3600
    report["sampler"] = {
        "image_nfe_per_s": evaluations_per_s,
        "largest_cell": [step, n_steps, tau, w, n],
        "largest_cell_hours": hours,
    }
    print(f"  {evaluations_per_s:,.0f} image-NFE/s ({args.sample_batch} images x {steps} steps in {seconds:.2f} s)")
    print(
        f"  largest cell of {CONFIG}: step {step:,}, {n:,} samples x {n_steps} steps, CFG {w:g} ({nfe} NFE): "
        f"about {hours:.1f} GPU-hours to sample and decode on this GPU (Inception features not included)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"error: {NO_GPU}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(), "train": {}, "decode": {}}
    peak = measure_peak_flops("cuda")
    report["bf16_matmul_peak_tflops"] = peak / 1e12
    print(f"{report['device']}: measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s")
    with tempfile.TemporaryDirectory(prefix="vqflow-gpu-check-") as tmp:
        tmp = Path(tmp)
        if args.vq_f8_ckpt:
            tokenizer, weights = load_tokenizer("vq-f8", args.vq_f8_ckpt, device="cpu"), str(args.vq_f8_ckpt)
        else:
            tokenizer, weights = build_tokenizer("vq-f8", device="cpu"), "random weights (no --vq-f8-ckpt)"
        latents = random_latents(tokenizer, tmp / "shards")
        print(f"1. DiT-XL/2 training step at batch {args.batch_size}, bf16 autocast ({args.steps} timed steps)")
        purr = train_steps(args, latents, tmp / "run", peak, report)
        print("2. resume from a checkpoint")
        resume(purr, latents, tmp / "run", report)
        print(f"3. full-size vq-f8 decode, float32 ({weights})")
        per_image = decode(tokenizer.cuda(), report)
        print("4. nearest-code search, K = 16384, d = 4, queries 1% away from a code")
        nearest_code_mismatch(report)
        print(f"5. purr sampler at {GRID[0]}x{GRID[1]} latents, batch {args.sample_batch}")
        sampler(purr, args, per_image, report)
        purr.close_batches()
    report["wall_s"] = time.perf_counter() - start
    print(f"done in {report['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    ok = report["resume"]["ok"] and report["nearest_code_mismatch"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
