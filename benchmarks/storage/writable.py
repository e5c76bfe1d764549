"""Checks on output paths before anything is written: can this path be created, and does the disk
under it hold what will be written. Each answer is a reason to print (or None), so a command can
refuse bad output arguments in one line naming the path before it starts any work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def existing_ancestor(path: Path) -> Path:
    """The nearest existing path at or above ``path`` (the folder a new path would be created in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable_reason(path: Path) -> str | None:
    """Why ``path`` (a file or folder, existing or not) cannot be created or replaced here, or None.
    Read-only mounts and immutable (``chattr +i``) folders are refused even for root."""
    path = Path(path)
    base = existing_ancestor(path)
    if base.is_file() and base != Path(os.path.abspath(path)):
        return f"{base} is a file, not a folder"
    folder = base if base.is_dir() else base.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that would hold ``path``."""
    return shutil.disk_usage(existing_ancestor(path)).free


def human_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1000, as disk sizes are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"
