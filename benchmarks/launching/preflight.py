"""Checks of a run's inputs before anything is written to its folder.

A mistake in the data path, a tokenizer or shard file, or the launcher must stop the command at
once with a message naming the file and the fix, not after the manifest is written (or after
training). Each check here reads only metadata (folder listings, ``meta.json``, file headers),
so it costs milliseconds; the full reads happen, as before, when the latent space is prepared.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.core.config import BenchmarkConfig, ConfigError


def check_inputs(cfg: BenchmarkConfig) -> None:
    """Raise ConfigError naming the key, the file and the fix for the first missing input."""
    check_data(cfg)
    check_tokenizer(cfg)
    check_launcher(cfg)


def check_data(cfg: BenchmarkConfig) -> None:
    data = cfg.data
    if data.dataset == "mnist5k":
        return
    if not data.path:
        example = "ROOT/<class>/<image>" if data.dataset == "imagefolder" else "a folder written by python -m benchmarks.encode"
        raise ConfigError(f"data.path is required for data.dataset={data.dataset!r} ({example}): "
                          f"add --set data.path=...")
    if data.dataset == "imagefolder":
        check_image_folder(Path(data.path))
    else:
        from benchmarks.data.shards import read_meta

        try:
            meta = read_meta(data.path)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.path: {err}") from None
        missing = [entry[name] for entry in meta.get("shards", []) for name in ("codes", "labels")
                   if not (Path(data.path) / entry[name]).is_file()]
        if not meta.get("complete", True) or missing:
            what = f"{len(missing)} shard file(s) are missing, e.g. {missing[0]}" if missing else "the encoding did not finish"
            raise ConfigError(f"data.path: the code shards at {data.path} are incomplete ({what}); rerun "
                              "python -m benchmarks.encode for them (it continues where it stopped)")


def check_image_folder(root: Path) -> None:
    """ROOT/<class>/<image>: the folder exists, has class subfolders and at least one image (the
    listing stops at the first, so an ImageNet-sized folder costs no full walk here)."""
    from benchmarks.data.images import IMAGE_SUFFIXES

    if not root.is_dir():
        raise ConfigError(f"data.path: image folder {root} does not exist")
    classes = [p for p in root.iterdir() if p.is_dir()]
    if not classes:
        raise ConfigError(f"data.path: image folder {root} has no class subfolders (expected ROOT/<class>/<image>)")
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for folder in classes for p in folder.rglob("*")):
        raise ConfigError(f"data.path: image folder {root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")


def check_tokenizer(cfg: BenchmarkConfig) -> None:
    tok = cfg.tokenizer
    if tok.kind == "vqvae" and not tok.ckpt:
        return
    if not tok.ckpt:
        raise ConfigError(f"tokenizer.ckpt is required for tokenizer.kind={tok.kind!r}: the path to its checkpoint "
                          "(python -m benchmarks.tokenizer list says where to get it)")
    path = Path(tok.ckpt).expanduser()
    if tok.kind != "vqvae":
        from backbones.tokenizers.pretrained import resolve_checkpoint

        try:
            path = resolve_checkpoint(tok.kind, path)
        except (FileNotFoundError, KeyError) as err:
            raise ConfigError(f"tokenizer.ckpt: {err}") from None
    elif not path.is_file():
        raise ConfigError(f"tokenizer.ckpt: {path} does not exist (a vqvae.pt saved by the suite)")
    from backbones.tokenizers.safe_pickle import describe_non_checkpoint

    problem = describe_non_checkpoint(path)
    if problem:
        raise ConfigError(f"tokenizer.ckpt: {problem}")


def check_launcher(cfg: BenchmarkConfig) -> None:
    if cfg.launcher.kind == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("launcher.kind is 'slurm' but there is no sbatch command on this machine's PATH: run on a "
                          "SLURM login node, or use --launcher local (this process) or submitit-local (subprocesses)")
