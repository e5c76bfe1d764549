"""``benchmarks.sample`` and ``benchmarks.score`` under misuse (issue 25 item 5, the sweep's table):
each case exits 2 with one line naming the argument or file and the fix, and writes nothing it
should not. Argument and input checks call the CLIs' ``main`` in this process; concurrent exports
run as real subprocesses on the finished 20-step smoke run of ``test_misuse``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import sample as sample_cli
from benchmarks import score as score_cli
from tests.e2e.test_misuse import ROOT, env
from tests.support.mounts import read_only

EXPORT = ["--method", "purr", "--batch-size", "20", "--no-progress"]


def call(capsys, main, *args: str) -> tuple[int, str, str]:
    """``main(ARGS)`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def sample(capsys, run: Path, out: Path, *args: str) -> tuple[int, str]:
    """``benchmarks.sample`` of 20 samples of ``run`` into ``out``: (exit status, stderr)."""
    code, _, err = call(
        capsys, sample_cli.main, "--run", str(run), *EXPORT, "--num-samples", "20", *args, "--out", str(out)
    )
    return code, err


def export_cmd(run: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.sample", "--run", str(run), *EXPORT, *extra, "--out", str(out)]


# ------------------------------------------------------------------------------- sample


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "0"], "--temperature must be a finite number > 0, got 0"),
        (["--temperature", "-1"], "--temperature must be a finite number > 0, got -1"),
        (["--temperature", "nan"], "--temperature must be a finite number > 0, got nan"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--cfg-scale", "-1"], "--cfg-scale must be >= 0 (as eval.cells[].cfg_scale of benchmarks.run), got -1"),
    ],
)
def test_sampler_arguments_exit_2_at_parsing(capsys, tmp_path, args, message):
    out = tmp_path / "k.npz"
    code, err = sample(capsys, tmp_path, out, *args)
    assert code == 2 and err.count("\n") == 1, err
    assert_one_error_line(err, message)
    assert list(tmp_path.iterdir()) == []


def test_sample_out_under_a_file_is_named(capsys, finished, tmp_path):
    (tmp_path / "a_file").write_text("mine\n")
    out = tmp_path / "a_file" / "x.npz"
    code, err = sample(capsys, finished, out)
    assert code == 2, err
    assert_one_error_line(err, f"--out {out} cannot be written ({tmp_path / 'a_file'} is a file, not a folder)")
    assert (tmp_path / "a_file").read_text() == "mine\n"


def test_sample_out_on_a_read_only_mount(capsys, finished, tmp_path):
    with read_only(tmp_path / "ro") as folder:
        out = folder / "x.npz"
        code, err = sample(capsys, finished, out)
    assert code == 2, err
    assert_one_error_line(err, f"--out {out} cannot be written (folder {folder} is not writable)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize(
    "device, message",
    [
        ("cuda", "--device cuda: no CUDA device is available on this machine; use --device cpu"),
        ("tpu9", "--device 'tpu9' is not a device name; use cpu, cuda or cuda:N"),
    ],
)
def test_sample_device_that_is_not_here(capsys, finished, tmp_path, device, message):
    out = tmp_path / "x.npz"
    code, err = sample(capsys, finished, out, "--device", device)
    assert code == 2, err
    assert_one_error_line(err, message)
    assert list(tmp_path.iterdir()) == []


def test_huge_export_is_refused_with_its_size(capsys, finished, tmp_path):
    """Before: an 8 GB label allocation (10^9) or hundreds of GB of parts (10^8)."""
    out = tmp_path / "x.npz"
    code, err = sample(capsys, finished, out, "--num-samples", str(10**12))
    assert code == 2, err
    assert_one_error_line(err, f"--num-samples {10**12} of 32x32 images needs about 6.1 PB at {out}")
    assert "is free; export fewer samples or choose an --out on a larger disk" in err
    assert list(tmp_path.iterdir()) == []


def test_two_exports_at_once_are_one(finished, cache, tmp_path):
    """The second identical export is refused while the first runs (a lock per export and rank);
    the first writes its output and leaves no parts folder."""
    out, part = tmp_path / "k.npz", tmp_path / "k.npz.parts" / "part-00000.npz"
    cmd = export_cmd(finished, out, "--num-samples", "400", "--part-size", "20")
    first = subprocess.Popen(cmd, cwd=ROOT, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not part.exists() and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=600)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0 and out.exists() and not part.parent.exists(), first_err
    assert second.returncode == 2, second.stderr
    assert_one_error_line(second.stderr, f"another export into --out {out} is running (rank 0 holds")


def test_stale_parts_are_sampled_again(finished, cache, tmp_path):
    """A parts folder stranded without its plan (the sweep's race) holds a tau 0.9 part; an export
    at tau 0.5 into it samples that part again instead of reusing it."""
    common = ["--num-samples", "40", "--part-size", "20"]
    stale, fresh = tmp_path / "stale.npz", tmp_path / "fresh.npz"
    subprocess.run(export_cmd(finished, stale, *common, "--temperature", "0.9"), cwd=ROOT, env=env(cache), check=True)
    parts = tmp_path / "k.npz.parts"
    parts.mkdir()
    with np.load(stale) as data:  # part 1 of the tau 0.9 export, as an older version wrote parts
        images = data["arr_0"][20:40, :, :, :1].transpose(0, 3, 1, 2)
        with open(parts / "part-00001.npz", "wb") as f:
            np.savez(f, images=images, labels=data["arr_1"][20:40])
    for out in (tmp_path / "k.npz", fresh):
        cmd = export_cmd(finished, out, *common, "--temperature", "0.5")
        subprocess.run(cmd, cwd=ROOT, env=env(cache), check=True, capture_output=True)
    with np.load(tmp_path / "k.npz") as got, np.load(fresh) as want:
        assert np.array_equal(got["arr_0"], want["arr_0"])
    assert not parts.exists()


# ------------------------------------------------------------------------------- score


def test_object_array_npz_is_named(capsys, tmp_path):
    path = tmp_path / "q.npz"
    np.savez(path, arr_0=np.array([{"a": 1}, None], dtype=object))
    code, _, err = call(capsys, score_cli.main, str(path), "--run", str(tmp_path), "--no-progress")
    assert code == 2, err
    assert_one_error_line(err, f"{path} holds no image arrays (pickled objects, or not an .npz at all); expected")
    assert "allow_pickle" not in err


def test_truncated_png_in_a_scored_folder_is_named(capsys, tmp_path):
    from PIL import Image

    folder = tmp_path / "samples" / "3"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(folder / "000000.png")
    Image.new("RGB", (32, 32), "blue").save(folder / "000001.png")
    data = (folder / "000001.png").read_bytes()
    (folder / "000001.png").write_bytes(data[: len(data) // 2])
    code, _, err = call(capsys, score_cli.main, str(folder.parent), "--run", str(tmp_path), "--no-progress")
    assert code == 2, err
    assert_one_error_line(err, f"{folder / '000001.png'} cannot be read as an image (")
    assert "replace or delete it" in err


def test_score_refuses_images_of_another_size(capsys, finished, tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, arr_0=np.zeros((20, 64, 64, 3), np.uint8), arr_1=np.arange(20) % 10)
    code, _, err = call(capsys, score_cli.main, str(path), "--run", str(finished), "--no-progress")
    assert code == 2, err
    assert_one_error_line(err, f"{path} holds 64x64 images, run {finished} evaluates 32x32 images")


def test_score_append_into_a_run_metrics_file(capsys, finished, tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes((finished / "metrics.csv").read_bytes())
    path = tmp_path / "q.npz"
    np.savez(path, arr_0=np.zeros((20, 32, 32, 3), np.uint8))
    argv = [str(path), "--run", str(finished), "--no-progress", "--append", str(metrics)]
    code, _, err = call(capsys, score_cli.main, *argv)
    assert code == 2, err
    assert_one_error_line(err, f"--append {metrics} is not a scores file of benchmarks.score (no source column")
    assert metrics.read_bytes() == (finished / "metrics.csv").read_bytes()


def test_score_append_on_a_read_only_mount(capsys, finished, tmp_path):
    path = tmp_path / "q.npz"
    np.savez(path, arr_0=np.zeros((20, 32, 32, 3), np.uint8))
    with read_only(tmp_path / "ro") as folder:
        argv = [str(path), "--run", str(finished), "--no-progress", "--append", str(folder / "s.csv")]
        code, _, err = call(capsys, score_cli.main, *argv)
    assert code == 2, err
    assert_one_error_line(err, f"--append {folder / 's.csv'} cannot be written (folder {folder} is not writable)")


def test_rows_are_keyed_by_content_not_path(capsys, finished, cache, tmp_path, monkeypatch):
    """Overwriting q.npz and scoring it again used to keep the stale row under the same path."""
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    path, scores = tmp_path / "q.npz", tmp_path / "scores.csv"
    rng = np.random.default_rng(0)
    argv = [str(path), "--run", str(finished), "--no-progress", "--append", str(scores)]
    np.savez(path, arr_0=np.zeros((20, 32, 32, 3), np.uint8), arr_1=np.arange(20) % 10)
    assert call(capsys, score_cli.main, *argv)[0] == 0
    np.savez(path, arr_0=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), arr_1=np.arange(20) % 10)
    code, out, _ = call(capsys, score_cli.main, *argv)
    assert code == 0 and f"note: {scores} keeps 1 row(s) of {path} with other content (rows keyed by sha256)" in out
    code, out, _ = call(capsys, score_cli.main, *argv)
    assert code == 0 and "replaced the row of the same content (sha256" in out, out
    rows = pd.read_csv(scores)
    assert len(rows) == 2 and rows["sha256"].nunique() == 2 and set(rows["source"]) == {str(path)}
    assert rows["fid"].iloc[1] == pytest.approx(float(out.split("fid=")[1].split()[0]), rel=1e-5)
