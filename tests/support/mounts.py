"""Read-only folders for the misuse tests: a bind mount remounted read-only refuses writes even
to root (``chmod`` does not), and is undone afterwards."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` as a read-only bind mount (refused even for root); skipped where mounts are not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need root")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
