"""Sample a trained checkpoint outside the training loop, in the community's formats.

    python -m benchmarks.sample --run runs/in256 --method purr --seed 0 --num-samples 50000 \\
        --steps 250 --temperature 0.9 --cfg-scale 1.3 --out purr-50k.npz
    torchrun --nproc_per_node 8 -m benchmarks.sample ...          # same arguments, one GPU per rank

Loads the EMA weights of ``<run>/<method>/seed<S>/checkpoints/step_<N>.pt`` (the newest unless
``--step``; read with ``weights_only=True``), or of ``weights/step_<N>.pt`` where the job keeps
no checkpoints (``python -m benchmarks.export_weights``), and the run's tokenizer, and samples ``--num-samples``
images: sample i has label ``i mod num_classes`` (or ``labels[i mod len(labels)]`` with
``--labels``) and its own seed, exactly as the evaluator's cell with the same steps, temperature
and CFG scale at that checkpoint (``benchmarks.evaluation.sampling``), so the first n samples of
an export are the images of an n-sample evaluation cell.

Output: a path ending in ``.npz`` gets an ADM-format batch (``arr_0`` uint8 (N, H, W, 3), grey
images repeated to 3 channels; ``arr_1`` int64 labels (N,)), as read by the ADM evaluation suite
and ``python -m benchmarks.score``; any other path a folder of PNGs ``<out>/<label>/<i:06d>.png``.

Work is split into parts of ``--part-size`` samples kept in ``<out>.parts/`` (written atomically,
with ``plan.json`` pinning the arguments). Rank r of W (torchrun's or SLURM's ranks) samples the
parts ``p = r (mod W)``; a rerun skips finished parts, so an interrupted export continues. The
rank that finishes the last part writes the output and removes the parts folder; no rank waits
for another.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from backbones.dit import build_dit
from benchmarks.core.cli import OneLineParser
from benchmarks.core.config import BenchmarkConfig, from_dict
from benchmarks.core.distributed import DistEnv
from benchmarks.evaluation.evaluator import Cell, cell_seed
from benchmarks.evaluation.sampling import balanced_labels, sample_images, sample_seeds
from benchmarks.export_weights import codebook_digest
from benchmarks.launching.jobs import latents_for
from benchmarks.storage.atomic import locked, save_json, save_with
from benchmarks.storage.run_dir import RunDir, checkpoint_step
from benchmarks.storage.writable import free_bytes, human_bytes, unwritable_reason
from benchmarks.training.trainer import build_method
from methods.sampling import build_sampler


class UsageError(ValueError):
    """Bad arguments: the message names the option and what exists."""


def loadable_files(job) -> list[Path]:
    """What can be sampled of a ``JobDir``, oldest first: its checkpoints, or where it has none (a
    committed reference run) the EMA weights ``python -m benchmarks.export_weights`` kept."""
    return job.checkpoints() or job.weight_files()


def find_checkpoint(run: Path, method: str, seed: int, step: int | None) -> Path:
    """The checkpoint (or exported EMA weights) of (method, seed) at ``step`` (the newest if None);
    errors list what exists."""
    if not run.is_dir():
        raise UsageError(f"--run {run}: no such run folder")
    folder = RunDir(run)
    jobs = folder.jobs()
    methods = sorted({job.method for job in jobs if loadable_files(job)})
    if method not in methods:
        raise UsageError(
            f"--method {method!r}: run {run} has no checkpoints or weights of it; methods with either: "
            f"{', '.join(methods) or '(none)'}"
        )
    seeds = sorted(job.seed for job in jobs if job.method == method)
    if seed not in seeds:
        raise UsageError(f"--seed {seed}: run {run} has no seed {seed} of {method}; seeds: {seeds}")
    checkpoints = loadable_files(folder.job(method, seed))
    steps = [checkpoint_step(p) for p in checkpoints]
    if not steps or (step is not None and step not in steps):
        raise UsageError(f"--step {step}: {method} seed {seed} has checkpoints at steps {steps}")
    return checkpoints[-1] if step is None else checkpoints[steps.index(step)]


def load_model(state: dict, cfg: BenchmarkConfig, latents, device: torch.device):
    """The method and its EMA model of a checkpoint's or exported weights' state (loaded with
    ``weights_only=True``; the keys ``config``, ``method``, ``step`` and ``ema`` are read)."""
    method = build_method(cfg, state["method"], latents).to(device)
    model = build_dit(cfg.backbone, method.backbone_io(), latents.shards.grid, latents.num_classes)
    model.load_state_dict(state["ema"])
    return method, model.to(device).eval().requires_grad_(False), int(state["step"])


def check_tokenizer(state: dict, latents, source: Path) -> None:
    """Refuse weights exported with another tokenizer's codebook than the one built here (exported
    weights record its digest; checkpoints live beside the cache that built them and record none)."""
    recorded = state.get("tokenizer", {}).get("codebook_sha256")
    here = codebook_digest(latents.tokenizer.codebook)
    if recorded is not None and recorded != here:
        raise UsageError(
            f"{source} was trained on codes of a tokenizer whose codebook has sha256 {recorded[:16]}, but the "
            f"tokenizer built here ({latents.info.get('tokenizer', '?')}) has {here[:16]}: its samples would decode "
            "the wrong codes. The suite VQ-VAE trains to the same weights only with the same torch version and "
            "thread count; sample with the cache ($VQFLOW_CACHE) of the machine that trained the run"
        )


def resolve_labels(spec: str | None, n: int, num_classes: int) -> torch.Tensor:
    """``n`` labels: balanced ``i mod num_classes``, or ``labels[i mod len(labels)]`` for a spec "3,5,7"."""
    if spec is None:
        return balanced_labels(n, num_classes)
    try:
        given = torch.tensor([int(x) for x in spec.split(",")])
    except ValueError:
        raise UsageError(f"--labels {spec!r}: expected comma-separated class indices") from None
    if given.min() < 0 or given.max() >= num_classes:
        raise UsageError(f"--labels {spec!r}: class indices must lie in [0, {num_classes})")
    return given[torch.arange(n) % len(given)]


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.savez would append ".npz" to a bare temporary name
        np.savez(f, **arrays)


def write_output(images: np.ndarray, labels: np.ndarray, out: Path) -> None:
    """uint8 (N, C, H, W) images -> ADM ``.npz`` (arr_0 (N, H, W, 3), arr_1) or ``<out>/<label>/<i>.png``."""
    if out.suffix == ".npz":
        hwc = images.transpose(0, 2, 3, 1)
        if hwc.shape[-1] == 1:
            hwc = np.repeat(hwc, 3, axis=-1)

        save_with(lambda tmp: save_npz(tmp, arr_0=hwc, arr_1=labels.astype(np.int64)), out)
        return
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        path = out / str(int(label)) / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        save_with(lambda tmp: Image.fromarray(array).save(tmp, format="png"), path)  # noqa: B023 (called at once)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that exists or cannot be created, before any work."""
    if out.exists():
        raise UsageError(f"--out {out} already exists; delete it or choose another path")
    reason = unwritable_reason(out)
    if reason is not None:
        raise UsageError(f"--out {out} cannot be written ({reason}); choose a writable --out")


def pick_device(name: str | None, local_rank: int) -> torch.device:
    """``--device`` as a torch device; an unknown name or a missing GPU is a usage error."""
    if name is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available on this machine; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_disk(out: Path, num_samples: int, image_size: int) -> None:
    """Refuse an export whose parts and output cannot fit the free disk under ``out``; say the size."""
    need = 2 * num_samples * image_size * image_size * 3  # uint8 parts, then the output beside them
    free = free_bytes(out)
    if need > free:
        raise UsageError(
            f"--num-samples {num_samples} of {image_size}x{image_size} images needs about {human_bytes(need)} "
            f"at {out} (parts, then the output), only {human_bytes(free)} is free; export fewer samples or "
            "choose an --out on a larger disk"
        )
    print(f"export: {num_samples} samples need about {human_bytes(need)} ({human_bytes(free)} free)", file=sys.stderr)


def export(args: argparse.Namespace) -> Path | None:
    """Sample this rank's parts; the rank that completes the set writes ``args.out``. Returns the
    output path if this rank wrote it."""
    dist = DistEnv.from_environment()
    check_out(args.out)
    device = pick_device(args.device, dist.local_rank)
    checkpoint = find_checkpoint(args.run, args.method, args.seed, args.step)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = from_dict(state["config"])
    check_disk(args.out, args.num_samples, cfg.data.image_size)
    latents = latents_for(cfg, progress=args.progress and dist.is_main)
    check_tokenizer(state, latents, checkpoint)
    method, model, step = load_model(state, cfg, latents, device)
    del state  # the optimizer state is not needed
    steps = cfg.eval.cells[0].steps if args.steps is None else args.steps
    temperature = cfg.eval.method_temperature.get(args.method, 1.0) if args.temperature is None else args.temperature
    cell = Cell(steps, temperature, args.cfg_scale, args.num_samples, resolve_sampler(args.sampler, method))
    labels = resolve_labels(args.labels, args.num_samples, latents.num_classes)
    parts_dir = args.out.with_name(args.out.name + ".parts")
    plan = {
        "checkpoint": str(checkpoint.resolve()),
        "config": hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest(),
        "method": args.method,
        "seed": args.seed,
        "step": step,
        "sampler": cell.sampler,
        "steps": steps,
        "temperature": temperature,
        "cfg_scale": args.cfg_scale,
        "num_samples": args.num_samples,
        "labels": args.labels,
        "part_size": args.part_size,
    }
    plan_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    with export_lock(parts_dir, dist.rank, args.out):
        claim_plan(parts_dir / "plan.json", plan)
        sample_parts(args, dist, parts_dir, plan_id, (method, model, latents, device, labels, cell, step))
    return assemble(parts_dir, math.ceil(args.num_samples / args.part_size), args.out, plan_id)


def sample_parts(args, dist, parts_dir: Path, plan_id: str, job) -> None:
    """Sample this rank's missing parts (a part of another plan is sampled again), each tagged with ``plan_id``."""
    method, model, latents, device, labels, cell, step = job
    steps, temperature = cell.steps, cell.temperature
    seed = cell_seed(args.seed, step, cell)
    parts = range(0, args.num_samples, args.part_size)
    for p, start in enumerate(parts):
        path = parts_dir / f"part-{p:05d}.npz"
        if p % dist.world_size != dist.rank or part_plan(path) == plan_id:
            continue
        block = range(start, min(start + args.part_size, args.num_samples))
        samples = sample_images(
            method,
            model,
            latents.tokenizer.to(device),
            latents.shards.grid,
            labels[block.start : block.stop],
            sample_seeds(seed, block),
            steps=steps,
            temperature=temperature,
            cfg_scale=args.cfg_scale,
            batch_size=args.batch_size,
            decode_batch_size=args.decode_batch_size,
            device=device,
            sampler=cell.sampler,
            progress=args.progress,
            desc=f"rank {dist.rank} part {p + 1}/{len(parts)}",
        )
        arrays = {"images": samples.images.numpy(), "labels": samples.labels.numpy(), "plan": np.array(plan_id)}
        save_with(lambda tmp: save_npz(tmp, **arrays), path)  # noqa: B023 (called at once)


def part_plan(path: Path) -> str | None:
    """The plan id a part was sampled under; None for a missing, unreadable or untagged part."""
    try:
        with np.load(path) as part:
            return str(part["plan"]) if "plan" in part.files else None
    except (OSError, ValueError, EOFError):
        return None


@contextlib.contextmanager
def export_lock(parts_dir: Path, rank: int, out: Path):
    """One process per (export, rank): a second identical command is refused while the first runs."""
    from filelock import FileLock, Timeout

    parts_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(parts_dir / f"rank{rank}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(
            f"another export into --out {out} is running (rank {rank} holds {lock.lock_file}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def resolve_sampler(spec: str, method) -> str:
    """The canonical label of sampler ``spec`` for ``method``; UsageError naming the method's
    samplers if it is unknown, malformed or not one of them."""
    try:
        sampler = build_sampler(spec)
    except (KeyError, ValueError) as e:
        raise UsageError(f"--sampler {spec!r}: {e.args[0] if e.args else e}") from None
    if not sampler.supports(type(method)):
        raise UsageError(
            f"--sampler {spec!r}: method {method.name!r} has no such sampler; its samplers: "
            f"{', '.join(method.supported_samplers())}"
        )
    return sampler.label


def claim_plan(path: Path, plan: dict) -> None:
    """Pin the export's arguments in its parts folder; a different rerun into it is an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != plan:
                diff = {k: (saved.get(k), v) for k, v in plan.items() if saved.get(k) != v}
                raise UsageError(
                    f"{path.parent} holds parts of another export (differs in {diff}); "
                    "delete it or choose another --out"
                )
        else:
            save_json(plan, path)


def assemble(parts_dir: Path, count: int, out: Path, plan_id: str) -> Path | None:
    """Once all ``count`` parts of this plan exist, write ``out`` from them (once, under a lock) and remove them."""
    if not parts_dir.exists():  # another rank has written the output
        return None
    with locked(parts_dir / "plan.json"):
        paths = [parts_dir / f"part-{p:05d}.npz" for p in range(count)]
        if not parts_dir.exists() or not all(part_plan(p) == plan_id for p in paths):
            return None
        images, labels = [], []
        for path in paths:
            with np.load(path) as part:
                images.append(part["images"])
                labels.append(part["labels"])
        write_output(np.concatenate(images), np.concatenate(labels), out)
    shutil.rmtree(parts_dir)  # parts, plan, lock and any temporary file of a killed writer
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m benchmarks.sample",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Sharded over torchrun / SLURM ranks; resumable (see the module docstring).",
    )
    p.add_argument(
        "--run",
        type=Path,
        required=True,
        help="the run folder of python -m benchmarks.run (its jobs' checkpoints are read)",
    )
    p.add_argument("--method", required=True, help="the method whose checkpoint to sample, e.g. purr")
    p.add_argument("--seed", type=int, default=0, help="training seed of the job (default 0)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--num-samples", type=int, required=True, help="number of images N")
    p.add_argument(
        "--labels",
        default=None,
        help="comma-separated class indices, cycled over the samples (default: i mod num_classes)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's first eval cell)")
    p.add_argument(
        "--sampler",
        default="euler",
        help="sampler spec: a name with optional parameters, e.g. heun, maskgit or dopri5:rtol=1e-4 "
        "(default euler; python -m benchmarks.run --list shows each method's samplers)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: the run's eval.method_temperature for the method, else 1)",
    )
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale w (default 1)")
    p.add_argument("--out", type=Path, required=True, help="*.npz: an ADM-format batch; otherwise a folder of PNGs")
    p.add_argument("--batch-size", type=int, default=250, help="samples per sampler batch (default 250)")
    p.add_argument("--decode-batch-size", type=int, default=32, help="code grids decoded at once (default 32)")
    p.add_argument("--part-size", type=int, default=1000, help="samples per resumable part (default 1000)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA is available, else cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("num_samples", "batch_size", "decode_batch_size", "part_size", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        p.error(f"--temperature must be a finite number > 0, got {args.temperature:g}")
    if not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 0):
        p.error(f"--cfg-scale must be >= 0 (as eval.cells[].cfg_scale of benchmarks.run), got {args.cfg_scale:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = export(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if written is not None:
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
