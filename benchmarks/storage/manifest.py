"""The run manifest (``<run>/manifest.json``): resolved config, package versions, machine,
latent-space info, per-job summaries and timings. Several jobs of one run (e.g. a SLURM job
array) update it concurrently, so every update is a locked read-merge-write, written atomically.

Timings survive reruns: each invocation appends its own entry to an ``invocations`` list
(``timings.invocations``, ``timings.latents.invocations``, ``jobs.<method>/seed<k>.invocations``)
and the totals beside it (``timings.total_s``, ``jobs.<...>.eval_s``, ...) are sums over them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from benchmarks.storage.atomic import locked, save_json
from benchmarks.storage.run_dir import RunDir

PACKAGES = ("torch", "torchvision", "torch-fidelity", "numpy", "pandas", "submitit", "matplotlib")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info() -> dict:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def git_commit() -> str:
    """The project's git commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _merge(base: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def read_manifest(run_dir: str | Path) -> dict:
    path = RunDir(run_dir).manifest
    return json.loads(path.read_text()) if path.exists() else {}


def now_iso() -> str:
    """The current UTC time to the second (when an invocation started)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def add_timings(run_dir: str | Path, where: tuple[str, ...], seconds: dict[str, float], **info) -> dict:
    """Record one invocation's ``seconds`` (e.g. ``{"total_s": 41.2}``) at the manifest node
    ``where`` (e.g. ``("timings",)`` or ``("jobs", "purr/seed0")``): append ``{**info, **seconds}``
    to the node's ``invocations`` and set each key of ``seconds`` on the node to its sum over them.
    A total recorded before invocations were kept becomes the first entry, so it is not lost."""
    path = RunDir(run_dir).manifest
    with locked(path):
        manifest = read_manifest(run_dir)
        node = manifest
        for key in where:
            node = node.setdefault(key, {})
        if "invocations" not in node:
            earlier = {key: node[key] for key in seconds if key in node}
            node["invocations"] = [{"earlier_totals": True, **earlier}] if earlier else []
        node["invocations"].append({**info, **{key: round(value, 2) for key, value in seconds.items()}})
        for key in seconds:
            node[key] = round(sum(entry.get(key, 0.0) for entry in node["invocations"]), 2)
        save_json(manifest, path)
    return manifest


def update_manifest(run_dir: str | Path, patch: dict) -> dict:
    """Merge ``patch`` into the manifest (nested dicts merge key by key) under a file lock."""
    path = RunDir(run_dir).manifest
    with locked(path):
        manifest = _merge(read_manifest(run_dir), patch)
        save_json(manifest, path)
    return manifest
