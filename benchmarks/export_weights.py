"""Keep a run's EMA weights without its training state, so the run can be shared or committed.

    python -m benchmarks.export_weights results/samplers            # every job's newest checkpoint
    python -m benchmarks.export_weights runs/in256 --step 400000    # every job's checkpoint of that step

For each job ``<method>/seed<k>`` of the run, reads the checkpoint (``weights_only=True``) and
writes ``<method>/seed<k>/weights/step_<N>.pt``, a dict of

    config   the run's resolved config (as in the checkpoint)
    method   the method's name
    seed     the training seed
    step     the training step of the checkpoint
    ema      the EMA model's state dict, in the dtype it was trained in
    tokenizer  {"codebook_sha256": ...}: the digest of the codebook the model was trained on

about a quarter of the checkpoint's size (no online weights, Adam moments or RNG states), written
atomically (an existing file is replaced). ``python -m benchmarks.sample`` samples these exactly
as it samples the checkpoint they came from, when the job keeps no checkpoints: ``results/``
git-ignores checkpoints but not weights, so committed reference runs can be sampled. The weights
only mean something over the codes they were trained on: ``benchmarks.sample`` rebuilds the run's
tokenizer (from the cache, or by training the suite VQ-VAE again) and refuses to sample when its
codebook's digest differs from the recorded one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.core.cli import OneLineParser
from benchmarks.core.config import from_dict
from benchmarks.launching.jobs import latents_for
from benchmarks.storage.atomic import save_torch
from benchmarks.storage.run_dir import JobDir, RunDir, checkpoint_step

KEPT = ("config", "method", "seed", "step", "ema")
"""The checkpoint entries a weights file keeps."""


class UsageError(ValueError):
    """Bad arguments: the message names the run, job or step and what exists."""


def codebook_digest(codebook) -> str:
    """sha256 of a tokenizer's codebook (K, d) as float32 bytes: tells two tokenizers' codes apart."""
    import hashlib

    return hashlib.sha256(codebook.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def export_job(job: JobDir, step: int | None) -> Path:
    """Write the EMA weights of ``job``'s checkpoint at ``step`` (the newest if None); returns the file."""
    import torch

    checkpoints = job.checkpoints()
    steps = [checkpoint_step(p) for p in checkpoints]
    if step is not None and step not in steps:
        raise UsageError(f"--step {step}: {job.key} has checkpoints at steps {steps}")
    source = checkpoints[-1] if step is None else job.checkpoint(step)
    state = torch.load(source, map_location="cpu", weights_only=True)
    missing = [key for key in KEPT if key not in state]
    if missing:
        raise UsageError(f"{source} is not a training checkpoint of this suite: it lacks {', '.join(missing)}")
    latents = latents_for(from_dict(state["config"]), progress=False)
    tokenizer = {"codebook_sha256": codebook_digest(latents.tokenizer.codebook)}
    out = job.weights(checkpoint_step(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch({**{key: state[key] for key in KEPT}, "tokenizer": tokenizer}, out)
    return out


def export_run(run: Path, step: int | None) -> list[Path]:
    """Export every job of ``run`` that has checkpoints; refuses a run without any."""
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    jobs = [job for job in RunDir(run).jobs() if job.checkpoints()]
    if not jobs:
        raise UsageError(f"{run} holds no checkpoints (its jobs keep them in <method>/seed<k>/checkpoints/)")
    return [export_job(job, step) for job in jobs]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m benchmarks.export_weights",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="the run folder of python -m benchmarks.run")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: each job's newest)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = export_run(args.run, args.step)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
