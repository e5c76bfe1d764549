"""Encode an image folder into code shards with a pretrained VQ tokenizer.

    python -m benchmarks.encode --tokenizer vq-f8 --ckpt ~/ckpts/vq-f8.ckpt \\
        --data ~/imagenet/train --out ~/shards/in256-vqf8 --flip
    torchrun --nproc_per_node 8 -m benchmarks.encode ...     # data-parallel over ranks

Input: ``--data ROOT/<class>/<image>`` (``benchmarks.data.images.ImageFolder``: classes are the sorted
subfolder names; ADM centre-crop to ``--size``; images decoded in ``--workers`` DataLoader
processes). Output: the ``benchmarks.data.shards`` format.

Shard layout. The N images, in ImageFolder order, are cut into ``n = ceil(N / shard_size)``
consecutive blocks; shard ``s`` (``codes-s.npy``, ``labels-s.npy``) holds block ``s``. With
``--flip``, shard ``n + s`` holds the horizontal flips of block ``s`` (same labels, same order).
Each ``meta.json`` shard entry carries ``start`` (index of its first image) and ``flip``; so
``count`` is 2N with ``--flip`` and the first ``n`` shards are exactly the unflipped dataset.

Work is split into units (block ``s`` and, with ``--flip``, its flip shard). A unit is done when
its files exist (they are written atomically), so a rerun skips finished units and an interrupted
run continues. With ``RANK``/``WORLD_SIZE`` set (torchrun), rank ``r`` encodes the units
``s = r (mod WORLD_SIZE)``; whichever rank finishes last writes ``meta.json`` (once every shard
exists), so no rank waits on another. ``encode-plan.json`` pins the configuration: a rerun into the
same folder with another tokenizer, checkpoint, data or shard layout is an error.

``meta.json`` manifest, besides the shard fields: ``tokenizer`` (kind, checkpoint file name and
sha256, K, d, f, normalised), ``data`` (folder, image size, number of images, file-list hash),
``classes`` (names, index = label), ``image_size``, ``flip``, ``num_images`` (N), ``complete``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from backbones.tokenizers.pretrained import (
    KINDS,
    CheckpointMismatchError,
    PretrainedVQ,
    load_tokenizer,
    resolve_checkpoint,
)
from backbones.tokenizers.safe_pickle import UnsafeCheckpointError
from benchmarks.data.images import ImageFolder, to_model_range
from benchmarks.data.shards import write_meta, write_shard
from benchmarks.storage.atomic import locked, save_json
from benchmarks.storage.cache import content_hash

PLAN_FILE = "encode-plan.json"
FLIP_LAYOUT = "shard n + s holds the horizontal flips of shard s (n = number of unflipped shards)"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Unit:
    """Block ``block`` of the dataset (images ``start .. start + count - 1``) and its shard indices."""

    block: int
    start: int
    count: int
    shards: tuple[int, ...]  # (block,) or (block, n + block) with flips

    def entries(self) -> list[dict]:
        return [
            {
                "index": i,
                "count": self.count,
                "codes": f"codes-{i:05d}.npy",
                "labels": f"labels-{i:05d}.npy",
                "start": self.start,
                "flip": k == 1,
            }
            for k, i in enumerate(self.shards)
        ]

    def done(self, out: Path) -> bool:
        """All files present with the right number of rows (npy headers only are read)."""
        for entry in self.entries():
            for name in (entry["codes"], entry["labels"]):
                if not (out / name).is_file() or len(np.load(out / name, mmap_mode="r")) != self.count:
                    return False
        return True


def plan_units(num_images: int, shard_size: int, flip: bool) -> list[Unit]:
    n = math.ceil(num_images / shard_size)
    return [
        Unit(s, s * shard_size, min(shard_size, num_images - s * shard_size), (s, n + s) if flip else (s,))
        for s in range(n)
    ]


def rank_and_world() -> tuple[int, int]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world})")
    return rank, world


def pin_plan(out: Path, plan: dict) -> None:
    """Write ``encode-plan.json``, or check that an existing one describes the same encoding."""
    path = out / PLAN_FILE
    with locked(path):
        if path.is_file():
            old = json.loads(path.read_text())
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            if diff:
                raise ValueError(
                    f"{out} already holds shards of a different encoding (differs in: "
                    f"{', '.join(diff)}); use a new --out folder or delete it"
                )
        else:
            save_json(plan, path)


def encode_units(
    tok: PretrainedVQ,
    folder: ImageFolder,
    units: list[Unit],
    out: Path,
    *,
    flip: bool,
    batch_size: int,
    workers: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Encode ``units`` (each written as soon as its last batch is done)."""
    if not units:
        return
    batches = [
        (u, range(b, min(b + batch_size, u.start + u.count)))
        for u in units
        for b in range(u.start, u.start + u.count, batch_size)
    ]
    loader = DataLoader(
        folder, batch_sampler=[list(r) for _, r in batches], num_workers=workers, pin_memory=device.type == "cuda"
    )
    parts: dict[int, list] = {}
    bar = tqdm(total=sum(u.count for u in units), unit="img", desc="encoding", disable=not progress, dynamic_ncols=True)
    for (unit, _), (images, labels) in zip(batches, loader):
        x = to_model_range(images.to(device, non_blocking=True))
        codes = tok.encode(torch.cat([x, x.flip(-1)]) if flip else x).cpu().numpy().astype(np.uint16)
        codes = codes.reshape(2 if flip else 1, len(x), *codes.shape[1:])  # (views, b, h, w)
        parts.setdefault(unit.block, []).append((codes, labels.numpy()))
        bar.update(len(x))
        if sum(len(lab) for _, lab in parts[unit.block]) == unit.count:
            done = parts.pop(unit.block)
            codes, labels = np.concatenate([c for c, _ in done], axis=1), np.concatenate([lab for _, lab in done])
            for view, index in enumerate(unit.shards):
                write_shard(out, index, codes[view], labels)
    bar.close()


def finalize(out: Path, units: list[Unit], manifest: dict) -> bool:
    """Write ``meta.json`` if every unit is done; returns whether it did."""
    with locked(out / "meta.json"):
        if not all(u.done(out) for u in units):
            return False
        entries = [e for u in units for e in u.entries()]
        write_meta(out, shards=entries, **manifest, complete=True)
    return True


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, choices=list(KINDS), help="pretrained tokenizer kind")
    p.add_argument("--ckpt", required=True, type=Path, help="its checkpoint file (or a folder holding it)")
    p.add_argument("--data", required=True, type=Path, help="image folder ROOT/<class>/<image>")
    p.add_argument("--out", required=True, type=Path, help="shard folder to write (or resume)")
    p.add_argument("--flip", action="store_true", help="also encode horizontal flips (extra shards)")
    p.add_argument("--size", type=int, default=256, help="centre-crop size in pixels (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder batch and rank (default 32)")
    p.add_argument("--shard-size", type=int, default=50_000, help="images per shard (default 50000)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding images (default 4)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA is available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for name in ("size", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    spec = KINDS[args.tokenizer]
    if args.size % spec.downsample:
        p.error(f"--size {args.size} is not a multiple of {args.tokenizer}'s downsampling factor {spec.downsample}")
    try:
        ckpt = resolve_checkpoint(args.tokenizer, args.ckpt)
        folder = ImageFolder(args.data, args.size, "RGB")
        rank, world = rank_and_world()
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    if args.device is None:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    try:
        tok = load_tokenizer(args.tokenizer, ckpt, device=device)
    except (CheckpointMismatchError, UnsafeCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    if tok.codebook_size > np.iinfo(np.uint16).max + 1:
        print(f"error: codebook size {tok.codebook_size} does not fit the shards' uint16 codes", file=sys.stderr)
        return 1
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = [[str(path.relative_to(folder.root)), label, path.stat().st_size] for path, label in folder.samples]
    plan = {
        "tokenizer": args.tokenizer,
        "ckpt_sha256": sha256_file(ckpt),
        "image_size": args.size,
        "shard_size": args.shard_size,
        "flip": args.flip,
        "num_images": len(folder),
        "files": content_hash(files, folder.classes),
        "classes": folder.classes,
    }
    try:
        pin_plan(out, plan)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    units = plan_units(len(folder), args.shard_size, args.flip)
    mine = [u for u in units if u.block % world == rank and not u.done(out)]
    progress = not args.no_progress
    if progress:
        print(
            f"rank {rank}/{world}: {len(mine)} of {len(units)} blocks to encode "
            f"({sum(u.count for u in mine)} images) into {out}",
            file=sys.stderr,
        )
    encode_units(
        tok,
        folder,
        mine,
        out,
        flip=args.flip,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        progress=progress,
    )

    h, w = tok.latent_grid(args.size)
    manifest = {
        "grid": (h, w),
        "codebook_size": tok.codebook_size,
        "num_classes": folder.num_classes,
        "tokenizer": {
            "kind": args.tokenizer,
            "ckpt": ckpt.name,
            "ckpt_sha256": plan["ckpt_sha256"],
            "codebook_size": tok.codebook_size,
            "code_dim": tok.code_dim,
            "downsample": tok.downsample,
            "in_channels": tok.in_channels,
            "normalized": tok.normalized,
        },
        "data": {
            "dataset": "imagefolder",
            "path": str(folder.root.resolve()),
            "image_size": args.size,
            "num_images": len(folder),
            "id": f"imagefolder-{plan['files']}",
            "preprocessing": "adm-center-crop",
        },
        "classes": folder.classes,
        "image_size": args.size,
        "num_images": len(folder),
        "flip": args.flip,
        **({"flip_layout": FLIP_LAYOUT} if args.flip else {}),
    }
    if finalize(out, units, manifest):
        print(f"wrote {out / 'meta.json'}", file=sys.stderr)
    elif progress:
        print(f"rank {rank}: done; meta.json is written by the last rank to finish", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
