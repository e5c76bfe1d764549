"""The storage layer: files created with the umask's mode, the cache location, the file lock."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.storage.atomic import locked, save_json, save_npy, save_torch, save_with
from benchmarks.storage.cache import cache_dir


@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_respect_the_umask(tmp_path, group_umask):
    """Every writer creates ``0666 & ~umask`` (0664 here), as ``open()`` would, not mkstemp's 0600."""
    save_json({"a": 1}, tmp_path / "m.json")
    save_torch({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
    save_npy(np.zeros(3), tmp_path / "a.npy")
    save_with(lambda p: p.write_text("x"), tmp_path / "sub" / "f.txt")
    for name in ("m.json", "ckpt.pt", "a.npy", "sub/f.txt"):
        assert mode(tmp_path / name) == 0o664, name
    assert not list(tmp_path.rglob("*.tmp")), "temporary files are renamed or removed"


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "m.json"
    save_json({"old": True}, target)

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_with(broken, target)
    assert target.read_text().strip().startswith("{") and "old" in target.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"VQFLOW_CACHE": "{tmp}/explicit", "XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/explicit"),
        ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/vqflow"),
        ({"XDG_CACHE_HOME": "relative/ignored"}, "{home}/.cache/vqflow"),
        ({}, "{home}/.cache/vqflow"),
    ],
)
def test_cache_location(tmp_path, monkeypatch, env, expected):
    monkeypatch.delenv("VQFLOW_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    assert cache_dir("refstats") == Path(expected.format(tmp=tmp_path, home=tmp_path / "home")) / "refstats"
    assert cache_dir("refstats").is_dir()


def _hold(path: str, held: multiprocessing.Event, hold_s: float) -> None:
    with locked(path):
        held.set()
        time.sleep(hold_s)


def test_locked_excludes_other_processes(tmp_path):
    target = str(tmp_path / "metrics.csv")
    held = multiprocessing.get_context("spawn").Event()
    other = multiprocessing.get_context("spawn").Process(target=_hold, args=(target, held, 1.0))
    other.start()
    assert held.wait(60)
    start = time.monotonic()
    with locked(target):
        waited = time.monotonic() - start
    other.join(10)
    assert waited > 0.5, "the lock was taken while another process held it"


def test_jobs_get_the_launchers_cache_when_it_comes_from_xdg(tmp_path, monkeypatch):
    from benchmarks.launching.launch import job_setup

    monkeypatch.delenv("VQFLOW_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert f"export VQFLOW_CACHE={tmp_path / 'xdg' / 'vqflow'}" in job_setup()
