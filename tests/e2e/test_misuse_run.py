"""``benchmarks.run`` and ``python -m reports`` under misuse (issue 25 item 5, the sweep's table):
huge budgets, full and read-only disks, damaged or diverged results. Each case exits non-zero
with one line naming the problem and the fix, and leaves nothing half-written."""

from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run as run_cli_module
from tests.e2e.test_misuse import BASE, FAST, ROOT, cli, copy_run, env
from tests.support.mounts import read_only

DATA_LIMIT = 3 << 30
"""Bytes of heap a dry run may use (the interpreter with torch needs under 1 GB)."""


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "8m"):
    """A ``size`` tmpfs mounted at ``folder`` (root only; skipped elsewhere), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def limit_heap() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))


# ------------------------------------------------------------------------------- huge budgets


@pytest.mark.parametrize("iterations, cells", [(10**9, "100,000,000"), (10**12, "100,000,000,000")])
def test_dry_run_of_a_huge_budget_is_constant(tmp_path, iterations, cells):
    """Before: 191 s and 11.3 GB for 10^9 iterations, a bare MemoryError for 10^12."""
    cmd = [sys.executable, "-m", "benchmarks.run", *BASE, f"train.iterations={iterations}", "--dry-run"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120, preexec_fn=limit_heap
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"evaluation cells per job (purr): {cells} in all: step 10: " in proc.stdout
    assert "; ...; step " in proc.stdout and f"; step {iterations:,}: 8 steps" in proc.stdout
    assert "disk: about " in proc.stdout


def test_run_that_cannot_fit_the_disk_is_refused(capsys, tmp_path, monkeypatch):
    """Before: a 10^7-step run just started (and would have filled the disk with grids)."""
    monkeypatch.setenv("VQFLOW_CACHE", str(tmp_path / "cache"))
    with small_disk(tmp_path / "small") as disk:
        out = disk / "run"
        code, err = cli(capsys, *BASE, "train.iterations=10000000", "--out", str(out))
        written = list(disk.iterdir())
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: this run writes about 13.7 GB into --out {out} (1,000,000 evaluated checkpoints" in err
    assert "lower train.iterations or raise train.checkpoint_every, or choose an --out on a larger disk" in err
    assert written == []


# ------------------------------------------------------------------------------- feature extractor weights


def image_folder(root: Path) -> Path:
    from PIL import Image

    for label, colour in (("cat", "red"), ("dog", "blue")):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), colour).save(root / label / f"{i}.png")
    return root


def test_missing_inception_weights_before_writing(capsys, tmp_path, monkeypatch):
    """Before: preflight passed, then a 53-line FileNotFoundError after the VQ-VAE and training."""
    monkeypatch.delenv("VQFLOW_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("VQFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torch-hub copy of the weights
    images, out = image_folder(tmp_path / "images"), tmp_path / "run"
    code, err = cli(capsys, *BASE, "data.dataset=imagefolder", f"data.path={images}", "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert "error: eval.feature_extractor 'inception-v3-compat': Inception weights not found" in err
    assert "eval.inception_weights=/path/to/weights-inception-2015-12-05-6726825d.pth" in err
    assert not out.exists()


def test_eval_change_on_trained_steps_without_results(capsys, finished, tmp_path):
    """A run whose first evaluation failed (trained steps, no metrics row) takes a corrected eval.*
    setting; before, it was refused with "use --resume", which brought the failure back."""
    from benchmarks.core.config import load_config
    from benchmarks.storage.manifest import read_manifest, update_manifest

    out = copy_run(finished, tmp_path)
    (out / "metrics.csv").unlink()
    manifest = read_manifest(out)
    manifest["config"]["train"]["iterations"] = 40  # training not done: 20 of 40 steps
    update_manifest(out, {"config": manifest["config"]})
    corrected = load_config("smoke", [*FAST, "train.iterations=40", "eval.kid_subsets=3"])
    run_cli_module.check_config_change(out, corrected, read_manifest(out))
    assert "note: eval.kid_subsets changes from 2 to 3" in capsys.readouterr().err


# ------------------------------------------------------------------------------- read-only cache, full disk


def test_empty_read_only_cache_exits_2(capsys, tmp_path, monkeypatch):
    """Before: ``OSError: [Errno 30] Read-only file system`` after the manifest was written."""
    out = tmp_path / "run"
    with read_only(tmp_path / "cache") as empty:
        monkeypatch.setenv("VQFLOW_CACHE", str(empty))
        code, err = cli(capsys, *BASE, "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: the project cache {empty} is empty and cannot be written" in err
    assert "set VQFLOW_CACHE to a writable folder" in err and not out.exists()


def test_full_disk_is_one_line_and_no_temp_file(capsys, cache, tmp_path, monkeypatch):
    """A 4 MB disk holds the first checkpoint (3 MB), not the second. Before: torch's
    ``RuntimeError: [enforce fail at inline_container.cc:672]`` traceback."""
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    with small_disk(tmp_path / "small", "4m") as disk:
        code, err = cli(capsys, *BASE, "--out", str(disk / "run"))
        left = [p.name for p in disk.rglob("*.tmp")]
    checkpoint = disk / "run" / "purr" / "seed0" / "checkpoints" / "step_000000020.pt"
    assert code == 1 and err.strip().splitlines()[-1] == (
        f"error: no space left on the device writing {checkpoint}: free space there (or move --out to a "
        "larger disk), then rerun the same command to continue"
    ), err
    assert "Traceback" not in err and left == []


# ------------------------------------------------------------------------------- reports


def report(capsys, *args: str) -> tuple[int, str]:
    """``python -m reports ARGS`` in this process: (exit status, stderr)."""
    from reports.__main__ import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_report_names_the_diverged_jobs(capsys, finished, tmp_path):
    """Before: an empty report of a run whose every job diverged, divergence not mentioned."""
    from benchmarks.storage.run_dir import RunDir

    out = copy_run(finished, tmp_path)
    folder = RunDir(out)
    folder.metrics.unlink()
    folder.job("purr", 0).events.write_text('{"event": "start", "from_step": 0}\n{"event": "diverged", "step": 15}\n')
    code, err = report(capsys, str(out))
    assert code == 0 and "note: purr seed 0 in run 'run' diverged at step 15" in err, err
    text = folder.report_file.read_text()
    assert "### Diverged jobs" in text and "- purr seed 0 in run 'run' diverged at step 15" in text


def test_report_says_a_missing_final_fid(capsys, finished, tmp_path):
    """Before: step 10 shown as the final FID when the FID of step 20 was NaN, no warning."""
    import pandas as pd

    from benchmarks.storage.run_dir import RunDir

    out = copy_run(finished, tmp_path)
    folder = RunDir(out)
    metrics = pd.read_csv(folder.metrics)
    metrics.loc[metrics["step"] == 20, "fid"] = float("nan")
    metrics.to_csv(folder.metrics, index=False)
    assert report(capsys, str(out))[0] == 0
    row = next(line for line in folder.report_file.read_text().splitlines() if line.startswith("| tiny/1 | purr |"))
    assert "| 20 |" in row and "| missing (NaN) |" in row, row


def test_merged_runs_take_each_job_from_one_folder(capsys, finished, tmp_path):
    """D1 trained purr to 20; E1 holds the same job with cells up to 40 (an extension): before, the
    loss curve came from D1 (to 20) and the FID curve from both (to 40)."""
    import pandas as pd

    from benchmarks.storage.run_dir import RunDir

    d1 = copy_run(finished, tmp_path / "d")
    e1 = copy_run(finished, tmp_path / "e")
    metrics = pd.read_csv(RunDir(e1).metrics)
    later = metrics.assign(step=metrics["step"] + 20)
    pd.concat([metrics, later]).to_csv(RunDir(e1).metrics, index=False)
    code, err = report(capsys, str(d1), str(e1), "--out", str(tmp_path / "merged"))
    assert code == 0, err
    assert "metrics.csv: 2 row(s) of purr seed 0 only in run 'run' (steps 30-40) dropped" in err, err
    fid = pd.read_csv(tmp_path / "merged" / "figures" / "fid_vs_iterations.csv")
    assert fid["step"].max() == 20


def test_report_into_a_read_only_folder_exits_2(capsys, finished, tmp_path):
    with read_only(tmp_path / "ro") as folder:
        code, err = report(capsys, str(finished), "--out", str(folder))
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: the report folder {folder} cannot be written (folder {folder} is not writable)" in err


def test_duplicated_metrics_row_is_one_note(capsys, finished, cache, tmp_path, monkeypatch):
    """Before: a raw pandas/warnings ``MergeWarning`` dump in the log of ``benchmarks.run``."""
    out = copy_run(finished, tmp_path)
    metrics = out / "metrics.csv"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines) + lines[1])
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    code, err = cli(capsys, *BASE, "--out", str(out))
    assert code == 0, err
    line = len(lines) + 1
    assert f"note: {metrics} line {line} repeats the cell of line 2 (kept); delete line {line}" in err
    assert "MergeWarning" not in err and "warnings.warn" not in err


# ------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_rerun_logs_each_point_once(capsys, finished, cache, tmp_path, monkeypatch):
    """A rerun after a kill evaluates the newest checkpoint's missing cells again; before, it wrote
    that checkpoint's FID and sample grid into the event files a second time."""
    pytest.importorskip("tensorboard")
    from collections import Counter

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from benchmarks.storage.run_dir import RunDir

    out = copy_run(finished, tmp_path)
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    for _ in range(2):
        code, err = cli(capsys, *BASE, "--tensorboard", "--out", str(out))
        assert code == 0, err
    folder = RunDir(out).job("purr", 0).tensorboard
    points = Counter(
        (value.tag, event.step)
        for path in sorted(folder.iterdir())
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    )
    assert {tag for tag, _ in points} >= {"fid/steps8_tau0.9_cfg1_n20", "samples/steps8_tau0.9_cfg1_n20"}
    assert [p for p, n in points.items() if n > 1] == []
