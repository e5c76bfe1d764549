"""The command lines under misuse, as a hostile but realistic user drives them.

Every case checks the exit status, one clear message (naming the key or file and the fix, never a
traceback), and that nothing is half-written or duplicated. Validation cases call the CLIs'
``main`` in this process (the same code as ``python -m ...``, without a 5 s interpreter start);
runs, kills, interrupts and concurrent commands use real subprocesses on a shrunken ``smoke``
config that trains one method for 20 steps, sharing one finished run between cases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import run as run_cli_module
from benchmarks.storage.results import CELL_KEY, MetricsFileError, append_rows, cell_key, key_text

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "train.iterations=20",
    "train.checkpoint_every=10",
    "train.log_every=5",
    "tokenizer.vqvae.train_steps=30",
    "eval.temperatures=[]",
    "eval.num_samples=20",
    "eval.batch_size=20",
    "eval.kid_subsets=2",
    "eval.grid_samples=4",
]
"""A 20-step purr run with two evaluated checkpoints (10, 20), one 8-step cell each."""
BASE = ["--config", "smoke", "--methods", "purr", "--no-progress", "--set", *FAST]


# ----------------------------------------------------------------------------- helpers


def cli(capsys, *args: str) -> tuple[int, str]:
    """``python -m benchmarks.run ARGS`` in this process: (exit status, stderr)."""
    try:
        code = run_cli_module.main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def env(cache: Path) -> dict:
    return {**os.environ, "VQFLOW_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def start(cache: Path, out: Path, *extra: str, module: str = "benchmarks.run") -> subprocess.Popen:
    """The CLI as a user starts it from a terminal: with Ctrl-C's default action even when the test
    session itself runs in the background (``cmd &`` starts its children with SIGINT ignored, and
    Python then never raises KeyboardInterrupt)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *BASE, *extra, "--out", str(out)],
        cwd=ROOT,
        env=env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 600, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before the awaited moment:\n{proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(poll)


def job(out: Path) -> Path:
    return out / "purr" / "seed0"


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (job(out) / "checkpoints").glob("step_*.pt"))


def assert_complete_once(out: Path, steps=(10, 20)) -> None:
    """Every expected evaluation cell exactly once, every training-log step exactly once."""
    metrics = pd.read_csv(out / "metrics.csv")
    keys = [cell_key(r) for r in metrics.to_dict("records")]
    assert len(keys) == len(set(keys)), "duplicate metrics.csv cells"
    assert sorted(metrics["step"]) == sorted(steps)
    log = pd.read_csv(job(out) / "train_log.csv")
    assert list(log["step"]) == list(range(5, max(steps) + 1, 5)), "train_log.csv steps duplicated or missing"


def assert_no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


def finished_run(cache: Path, tmp_path_factory) -> Path:
    """A finished 20-step purr run in a new temporary folder (the ``finished`` fixture, once a module)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code, err = finish(start(cache, out))
    assert code == 0, err
    assert_complete_once(out)
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("*.lock"))
    return out


# ------------------------------------------------------------------- bad input: exit 2 before anything is written


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", ""], "--methods '' has an empty method name"),
        (["--methods", ","], "--methods ',' has an empty method name"),
        (["--methods", "purr,purr"], "--methods names 'purr' twice"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--set", "eval.temperatures=[0]"], "eval.temperatures must be > 0"),
        (["--set", "eval.temperatures=[-1]", "--dry-run"], "eval.temperatures must be > 0"),
        (["--set", "eval.cells=[{steps: 0}]"], "eval.cells[0].steps must be >= 1"),
        (["--set", "eval.cells=[{steps: 4, cfg_scale: -1}]"], "eval.cells[0].cfg_scale must be >= 0"),
        (["--set", "eval.num_samples=5"], "eval.num_samples must be >= 10"),
        (["--set", "train.lr=-0.1"], "train.lr must be a finite number > 0"),
        (["--set", "train.batch_size=30", "launcher.gpus_per_job=4"], "train.batch_size=30 must be divisible by"),
        (["--set", "eval.sweep_at=7"], "eval.sweep_at=7 is not a checkpoint step"),
        (["--set", "data.dataset=imagefolder"], "data.path is required for data.dataset='imagefolder'"),
        (["--set", "data.dataset=shards"], "data.path is required for data.dataset='shards'"),
    ],
)
def test_bad_value_exits_2_before_writing(capsys, tmp_path, args, message):
    out = tmp_path / "run"
    code, err = cli(capsys, "--config", "smoke", *args, "--out", str(out))
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


def test_malformed_yaml_and_a_yaml_list_exit_2(capsys, tmp_path):
    broken, listed = tmp_path / "broken.yaml", tmp_path / "listed.yaml"
    broken.write_text("train: {iterations: 3\n")
    listed.write_text("- train\n- eval\n")
    code, err = cli(capsys, "--config", str(broken), "--out", str(tmp_path / "a"))
    assert code == 2 and f"{broken}: invalid YAML" in err
    code, err = cli(capsys, "--config", str(listed), "--out", str(tmp_path / "b"))
    assert code == 2 and f"{listed}: the top level must be a mapping" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_empty_image_folder_is_refused_before_the_manifest(capsys, tmp_path):
    """Item 1: the run used to crash after writing manifest.json, and the corrected command was
    then refused as a different config."""
    empty, out = tmp_path / "images", tmp_path / "run"
    (empty / "cat").mkdir(parents=True)
    code, err = cli(capsys, *BASE, "data.dataset=imagefolder", f"data.path={empty}", "--out", str(out))
    assert code == 2 and f"data.path: image folder {empty} contains no images" in err, err
    assert not out.exists()


def test_folder_without_trained_step_takes_new_config(capsys, tmp_path):
    """A folder stranded by a failed start of an older version (manifest, no checkpoint, no
    result) accepts the corrected config; the manifest then records it."""
    from benchmarks.core.config import load_config
    from benchmarks.storage.manifest import read_manifest, update_manifest

    out = tmp_path / "run"
    stranded = load_config("smoke", ["data.dataset=imagefolder", f"data.path={tmp_path}"])
    update_manifest(out, {"config": stranded.to_dict(), "methods": ["purr"], "seeds": [0]})
    corrected = load_config("smoke", FAST)
    run_cli_module.check_config_change(out, corrected, read_manifest(out))
    assert "holds no trained step yet; its config is replaced" in capsys.readouterr().err


def test_incomplete_shards_name_the_missing_file(capsys, tmp_path):
    from benchmarks.data.shards import write_meta, write_shard

    shards = tmp_path / "shards"
    entry = write_shard(shards, 0, np.zeros((4, 8, 8), dtype=np.int64), np.zeros(4, dtype=np.int64))
    write_meta(
        shards, grid=(8, 8), codebook_size=32, num_classes=10, shards=[entry, {**entry, "codes": "codes_00001.npy"}]
    )
    code, err = cli(capsys, *BASE, "data.dataset=shards", f"data.path={shards}", "--out", str(tmp_path / "run"))
    assert code == 2 and "are incomplete (1 shard file(s) are missing, e.g. codes_00001.npy)" in err, err
    assert "python -m benchmarks.encode" in err and not (tmp_path / "run").exists()


def test_slurm_launcher_without_sbatch(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code, err = cli(capsys, *BASE, "--launcher", "slurm", "--out", str(tmp_path / "run"))
    assert code == 2 and "no sbatch command on this machine's PATH" in err, err
    assert not (tmp_path / "run").exists()


def test_html_page_as_tokenizer_checkpoint(capsys, tmp_path):
    page = tmp_path / "model.ckpt"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n")
    code, err = cli(capsys, *BASE, "tokenizer.kind=vq-f8", f"tokenizer.ckpt={page}", "--out", str(tmp_path / "run"))
    assert code == 2 and f"tokenizer.ckpt: {page} is an HTML page, not a checkpoint" in err, err


def test_out_that_is_a_file(capsys, tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("mine\n")
    code, err = cli(capsys, *BASE, "--out", str(out))
    assert code == 2 and f"--out {out} is a file, not a folder" in err, err
    assert out.read_text() == "mine\n"
    code, err = cli(capsys, *BASE, "--out", str(out / "run"))  # under a file: cannot be created
    assert code == 2 and "cannot be written" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the file cases above run instead")
def test_out_in_a_read_only_folder(capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = cli(capsys, *BASE, "--out", str(parent / "run"))
    finally:
        parent.chmod(0o755)
    assert code == 2 and "cannot be written" in err, err


def test_a_read_only_cache_serves_the_entries_it_holds(cache, finished, tmp_path):
    """A colleague's cache on a shared filesystem, readable but not writable: a run whose tokenizer,
    codes, feature extractor and reference statistics are all in it takes no lock and writes
    nothing there. Before, it failed creating a lock file. ``chattr +i`` makes the copy immutable
    even for root."""
    frozen = tmp_path / "cache"
    shutil.copytree(cache, frozen, ignore=shutil.ignore_patterns("*.lock"))
    if subprocess.run(["chattr", "-R", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (it needs root and a filesystem with immutable files)")
    try:
        with pytest.raises(PermissionError):
            (frozen / "probe").write_text("x")
        code, err = finish(start(frozen, tmp_path / "run"))
    finally:
        subprocess.run(["chattr", "-R", "-i", str(frozen)], check=True)
    assert code == 0, err
    assert_no_traceback(err)
    assert_complete_once(tmp_path / "run")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty (0 bytes"),
        (
            os.urandom(4096).replace(b"<", b"!").replace(b"PK", b"QK").lstrip(b"\x80") or b"x",
            "is not a PyTorch checkpoint",
        ),
        (b"<html><body>404</body></html>", "is an HTML page"),
    ],
)
def test_tokenizer_check_on_a_file_that_is_no_checkpoint(capsys, tmp_path, content, message):
    from benchmarks.tokenizer import main

    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    assert main(["check", "--kind", "vq-f8", "--ckpt", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} {message}" in err and err.count("\n") == 1, err


def test_tokenizer_check_refuses_code_for_safety(capsys, tmp_path):
    from benchmarks.tokenizer import main

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    path = tmp_path / "vq_ds8_c2i.pt"
    torch.save({"model": {}, "args": Payload()}, path)
    assert main(["check", "--kind", "llamagen-vq8", "--ckpt", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refused for safety" in err and "weights_only=False" not in err, err
    assert not (tmp_path / "pwned").exists()


def test_truncated_png_names_the_file(tmp_path):
    from PIL import Image

    from benchmarks.data.images import ImageFileError, ImageFolder

    (tmp_path / "a").mkdir()
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a" / "ok.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "a" / "cut.png")
    data = (tmp_path / "a" / "cut.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    folder = ImageFolder(tmp_path, 16)
    with pytest.raises(ImageFileError, match=r"image .*cut\.png cannot be read .*replace or delete it"):
        [folder[i] for i in range(len(folder))]


# ----------------------------------------------------------------------------- results files


def test_trace_keys_match_after_a_csv_round_trip(tmp_path):
    """``np.float64(0.125)`` in memory and ``0.125`` read back are one cell (was repr-keyed)."""
    assert key_text(np.float64(0.125)) == key_text("0.125") == "0.125"
    assert key_text(np.int64(3)) == key_text("3.0") == "3" and key_text(float("nan")) == key_text("") == ""
    rows = [
        {
            "method": "purr",
            "seed": 0,
            "step": 20,
            "steps": 8,
            "temperature": np.float64(0.125),
            "cfg_scale": 1.0,
            "t": np.float64(t),
            "entropy": 1.0,
        }
        for t in (0.0, 0.5)
    ]
    columns = ["method", "seed", "step", "steps", "temperature", "cfg_scale", "t", "entropy"]
    assert append_rows(tmp_path / "traces.csv", rows, columns, columns[:-1]) == 2
    assert append_rows(tmp_path / "traces.csv", rows, columns, columns[:-1]) == 0
    assert len(pd.read_csv(tmp_path / "traces.csv")) == 2


OLD_COLUMNS = [
    "run",
    "method",
    "seed",
    "step",
    "images_seen",
    "train_flops",
    "train_wall_s",
    "backbone",
    "params",
    "tokenizer",
    "sampler",
    "steps",
    "nfe",
    "temperature",
    "cfg_scale",
    "n_samples",
    "feature_extractor",
    "ref_stats",
    "fid",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "isc",
    "class_accuracy",
    "entropy",
    "eval_wall_s",
    "git_commit",
]
"""A metrics.csv header from before ``isc_std`` and the sampling seconds were columns."""


def test_appending_never_retypes_existing_rows(tmp_path):
    """pandas used to read the file back and rewrite it: ``seed`` 0 became 0.0 where a column
    had an empty cell. Existing lines are now copied as they are; a new metric column (``isc_std``)
    and the sampling seconds per image go at the end of an older file's header, empty in its old rows."""
    from benchmarks.evaluation.metrics import metric_columns
    from benchmarks.storage.results import metrics_csv_columns

    path = tmp_path / "metrics.csv"
    old = dict.fromkeys(OLD_COLUMNS, "") | {
        "method": "purr",
        "seed": "0",
        "step": "10",
        "sampler": "euler",
        "steps": "8",
        "temperature": "0.9",
        "cfg_scale": "1.0",
        "n_samples": "20",
    }
    path.write_text(",".join(OLD_COLUMNS) + "\n" + ",".join(old[c] for c in OLD_COLUMNS) + "\n")
    before = path.read_text().split("\n", 1)[1]
    new = {**old, "seed": 0, "step": 20, "fid": 3.5, "isc_std": 0.25, "temperature": 0.9, "cfg_scale": 1.0}
    assert append_rows(path, [new], metrics_csv_columns(metric_columns())) == 1
    header, rest = path.read_text().split("\n", 1)
    added = ["isc_std", "sample_s_per_image", "sample_cpu_s_per_image"]
    assert header == ",".join(OLD_COLUMNS + added) and rest.startswith(before.rstrip("\n") + ",,,\n")
    assert pd.read_csv(path)["isc_std"].tolist()[1] == 0.25


@pytest.mark.parametrize("garbage", ["this is not a row", "purr,zero,ten" + "," * 24])
def test_a_garbage_line_in_metrics_is_named(tmp_path, garbage):
    path = tmp_path / "metrics.csv"
    row = dict.fromkeys(CELL_KEY, 1)
    append_rows(path, [row])
    with open(path, "a") as f:
        f.write(garbage + "\n")
    before = path.read_text()
    with pytest.raises(MetricsFileError, match=rf"{path} line 3 is not a row of this file.*delete that line"):
        append_rows(path, [{**row, "step": 2}])
    assert path.read_text() == before


# ------------------------------------------------------------------- runs: kills, interrupts, concurrency, changes


def test_garbage_line_in_metrics_of_a_run_exits_2(capsys, finished, tmp_path, cache, monkeypatch):
    out = copy_run(finished, tmp_path)
    with open(out / "metrics.csv", "a") as f:
        f.write("<html>oops</html>\n")
    before = (out / "metrics.csv").read_text()
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    code, err = cli(capsys, *BASE, "eval.temperatures=[0.7]", "--out", str(out))
    assert code == 2 and f"{out / 'metrics.csv'} line 4 is not a row of this file" in err, err
    assert (out / "metrics.csv").read_text() == before
    report = subprocess.run(
        [sys.executable, "-m", "reports", str(out)],
        cwd=ROOT,
        env=env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )  # before: a pandas ParserError
    assert report.returncode == 2 and f"{out / 'metrics.csv'} line 4 is not a row of this file" in report.stderr
    assert_no_traceback(report.stderr)


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(finished, tmp_path, cache):
    """A truncated newest checkpoint (and, as keep_checkpoints=1 leaves no older one, the run
    retrains from step 0 on the same data order): a warning naming the file, then exit 0 with
    every cell and every log step once."""
    out = copy_run(finished, tmp_path)
    newest = job(out) / "checkpoints" / "step_000000020.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    code, err = finish(start(cache, out))
    assert code == 0, err
    assert f"checkpoint {newest} is unreadable" in err and "training starts again from step 0" in err, err
    assert (newest.parent / "step_000000020.pt.corrupt").exists() and checkpoint_steps(out) == [20]
    assert_complete_once(out)


def test_finished_run_takes_only_eval_changes_and_more_steps(finished, tmp_path, cache, capsys, monkeypatch):
    """eval.* may change once training is done (new cells at the last checkpoint); a larger
    train.iterations extends the run (issue 13 item 4: the jobs continue from their newest
    checkpoint; the manifest and the report record the new budget); any other change is refused."""
    out = copy_run(finished, tmp_path)
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    code, err = cli(capsys, *BASE, "train.lr=0.01", "--out", str(out))
    assert code == 2 and "train.lr: 0.001 in the run, 0.01 now" in err, err
    code, err = cli(capsys, *BASE, "train.iterations=10", "--out", str(out))
    assert code == 2 and "train.iterations: 20 in the run, 10 now" in err, err

    code, err = finish(start(cache, out, "eval.temperatures=[0.7]"))
    assert code == 0 and "note: eval.temperatures changes from [] to [0.7]" in err, err
    metrics = pd.read_csv(out / "metrics.csv")
    assert sorted(metrics["temperature"]) == [0.7, 0.9, 0.9] and set(metrics[metrics.temperature == 0.7].step) == {20}

    code, err = finish(start(cache, out, "eval.temperatures=[0.7]", "train.iterations=30"))
    assert code == 0 and "note: train.iterations changes from 20 to 30" in err, err
    assert json.loads((out / "manifest.json").read_text())["config"]["train"]["iterations"] == 30
    report = (out / "report" / "report.md").read_text()
    assert "| run | smoke | tiny/1 | vqvae | 30 | 32 | purr |" in report  # the setup table's row of this run
    metrics = pd.read_csv(out / "metrics.csv")
    assert sorted(zip(metrics.step, metrics.temperature)) == [(10, 0.9), (20, 0.7), (20, 0.9), (30, 0.7), (30, 0.9)]
    assert_complete_once(out, steps=(10, 20, 20, 30, 30))


def test_two_commands_on_one_folder(tmp_path, cache):
    """The second command refuses the job the first holds (exit 2 naming it); the first is
    unaffected: each log step and each cell once."""
    out = tmp_path / "run"
    first = start(cache, out)
    wait_for(lambda: (job(out) / "job.lock").exists() and (job(out) / "job.lock").read_text().strip(), first)
    code, err = finish(start(cache, out))
    assert code == 2 and "purr/seed0 of" in err and "is being run by pid" in err, err
    assert_no_traceback(err)
    code, err = finish(first)
    assert code == 0, err
    assert_complete_once(out)


def test_killed_and_interrupted_run_resumes_with_every_cell_once(tmp_path, cache):
    """SIGKILL during the first evaluation, SIGKILL during training, SIGINT (Ctrl-C), each
    followed by the same command: the run completes with every cell and log step exactly once;
    Ctrl-C prints one line and exits 130."""
    out = tmp_path / "run"

    def metrics_steps() -> list[int]:
        return list(pd.read_csv(out / "metrics.csv")["step"]) if (out / "metrics.csv").exists() else []

    def holds_lock(proc) -> bool:
        lock = job(out) / "job.lock"
        return lock.exists() and f"pid {proc.pid} " in lock.read_text()

    proc = start(cache, out)  # killed while the checkpoint of step 10 is evaluated
    wait_for(lambda: checkpoint_steps(out), proc)
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL

    proc = start(cache, out)  # killed once step 10 is evaluated: while training steps 11-20
    wait_for(lambda: holds_lock(proc) and metrics_steps() == [10], proc)
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL
    assert metrics_steps() in ([10], [10, 20])

    proc = start(cache, out)  # Ctrl-C while it runs the job
    wait_for(lambda: holds_lock(proc), proc)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == 130, err
    assert_no_traceback(err)
    assert err.strip().splitlines()[-1] == (
        "interrupted: finished checkpoints and evaluation cells are kept; rerun the same command to continue"
    )

    code, err = finish(start(cache, out))
    assert code == 0, err
    assert_complete_once(out)


def test_reports_on_an_empty_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reports", str(tmp_path)],
        cwd=ROOT,
        env=env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and f"{tmp_path}: not a run folder" in proc.stderr, proc.stderr
    assert_no_traceback(proc.stderr)
