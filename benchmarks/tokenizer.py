"""Inspect a pretrained VQ tokenizer checkpoint and reconstruct an image with it.

    python -m benchmarks.tokenizer list
    python -m benchmarks.tokenizer check --kind vq-f8 --ckpt ~/ckpts/vq-f8.ckpt
    python -m benchmarks.tokenizer check --kind vq-f8 --ckpt ~/ckpts/vq-f8.ckpt --image in.png --out recon.png

``check`` loads the checkpoint (safely, see ``backbones.tokenizers.safe_pickle``), prints the codebook size,
code dimension, downsampling factor, parameter count and whether codes are L2-normalised; with
``--image`` it centre-crops the image to ``--size`` (ADM preprocessing), encodes, decodes,
writes the reconstruction and prints its PSNR. Exit status 2 for a bad kind, a missing file, a
file that is no checkpoint (empty, an HTML page, truncated) or one refused for safety (it
references code), 1 for a checkpoint that does not fit the kind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backbones.tokenizers.pretrained import KINDS, CheckpointMismatchError, PretrainedVQ, load_tokenizer, num_parameters
from backbones.tokenizers.safe_pickle import NotACheckpointError, UnsafeCheckpointError
from benchmarks.data.images import center_crop_arr, to_model_range, to_uint8
from benchmarks.storage.atomic import save_with


def describe(tok: PretrainedVQ) -> dict:
    """The numbers ``check`` prints."""
    return {
        "kind": tok.kind,
        "codebook_size": tok.codebook_size,
        "code_dim": tok.code_dim,
        "downsample": tok.downsample,
        "parameters": num_parameters(tok),
        "normalized": tok.normalized,
    }


def reconstruct(tok: PretrainedVQ, image: Image.Image, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(centre-cropped input, reconstruction), both uint8 (size, size, 3)."""
    crop = np.array(center_crop_arr(image.convert("RGB"), size), dtype=np.uint8)
    x = to_model_range(torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous())
    recon = to_uint8(tok.decode(tok.encode(x)))[0].permute(1, 2, 0).numpy()
    return crop, recon


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tokenizer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the tokenizer kinds, their files and where to get them")
    check = sub.add_parser("check", help="load a checkpoint, print its numbers, optionally reconstruct an image")
    check.add_argument("--kind", required=True, choices=list(KINDS), help="the tokenizer kind (see: list)")
    check.add_argument("--ckpt", required=True, type=Path, help="the checkpoint file (or a folder holding it)")
    check.add_argument("--image", type=Path, help="an image to reconstruct")
    check.add_argument("--out", type=Path, help="where to write the reconstruction (PNG); needs --image")
    check.add_argument("--size", type=int, default=256, help="centre-crop size in pixels (default 256)")
    check.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run the tokenizer (default: cuda if available, else cpu)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "list":
        for spec in KINDS.values():
            print(
                f"{spec.kind:14s} {spec.file_name:15s} K={spec.codebook_size} d={spec.code_dim} "
                f"f={spec.downsample} normalised={'yes' if spec.normalized else 'no'}\n{'':15s}from {spec.source}"
            )
        return 0
    if (args.image is None) != (args.out is None):
        p.error("--image and --out go together")
    if args.image is not None and not args.image.is_file():
        p.error(f"image {args.image} does not exist")
    try:
        tok = load_tokenizer(args.kind, args.ckpt, device=args.device)
    except FileNotFoundError as err:
        p.error(str(err))
    except (NotACheckpointError, UnsafeCheckpointError) as err:  # not a checkpoint, or refused for safety
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CheckpointMismatchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    info = describe(tok)
    print(f"kind:               {info['kind']} ({args.ckpt})")
    print(f"codebook size K:    {info['codebook_size']}")
    print(f"code dimension d:   {info['code_dim']}")
    print(f"downsampling f:     {info['downsample']}")
    print(f"parameters:         {info['parameters']:,}")
    print(f"normalised codes:   {'yes (L2, cosine nearest neighbour)' if info['normalized'] else 'no'}")
    if args.image is not None:
        if args.size % tok.downsample:
            p.error(f"--size {args.size} is not a multiple of the downsampling factor {tok.downsample}")
        with Image.open(args.image) as img:
            crop, recon = reconstruct(tok, img, args.size)
        save_with(lambda tmp: Image.fromarray(recon).save(tmp, format="PNG"), args.out)
        print(
            f"reconstruction:     {args.out} ({args.size}x{args.size}, PSNR {psnr(crop, recon):.2f} dB, "
            f"{args.size // tok.downsample}x{args.size // tok.downsample} codes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
