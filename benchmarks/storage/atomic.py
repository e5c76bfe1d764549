"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (or a rerun after a crash) never sees a half-written checkpoint, CSV or JSON file.
Files are created as ordinary files are (mode 0666 less the process umask), so with a group
umask such as 002 colleagues on a shared filesystem can read a run and reuse the cache.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_temp_file(path: Path) -> Path:
    """Create an empty, uniquely named ``.<name>.<random>.tmp`` next to ``path``. Unlike
    ``tempfile.mkstemp`` (always mode 0600) it asks for 0666 and lets the umask decide."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def save_torch(obj, path: str | os.PathLike) -> None:
    import torch  # here, so that reading results (reports) does not need torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)  # a file object, so the archive's internal name is not the random temp name
        except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as RuntimeError
            if "inline_container" not in str(e) and "write failed" not in str(e):
                raise
            full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
            raise OSError(
                errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC if full else errno.EIO), str(path)
            ) from None


def save_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_npy(array, path: str | os.PathLike) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    save_with(write, path)


def save_with(writer: Callable[[Path], None], path: str | os.PathLike) -> None:
    """Atomically write ``path`` with ``writer(tmp_path)`` (e.g. ``np.save``, ``Image.save``)."""
    with atomic_path(path) as tmp:
        writer(tmp)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``path + '.lock'`` across processes (for read-modify-write of shared
    files), held until the block ends. ``filelock`` takes an OS lock on the file (``flock`` on
    Unix), creates it with the umask's mode and removes it on release."""
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        yield


@contextlib.contextmanager
def built_once(path: str | os.PathLike, complete: Callable[[], bool]) -> Iterator[bool]:
    """For a cache entry at ``path`` that one process builds and many read: yields whether the
    entry is ``complete()``. A complete entry is read without taking the lock, so a cache that is
    read-only (a colleague's, on a shared filesystem) serves every entry it holds; otherwise the
    block runs under ``locked(path)`` and yields ``complete()`` as found once the lock is held, so
    concurrent callers build the entry once."""
    if complete():
        yield True
        return
    with locked(path):
        yield complete()
