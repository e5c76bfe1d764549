"""The sbatch script submitit writes for a job: resources, requeue, the shared cache. Building it
needs Slurm's client tools (submitit looks for ``srun``), which the session's cluster installs."""

from __future__ import annotations

import pytest

from benchmarks.core.config import load_config
from benchmarks.launching.launch import PROJECT_ROOT, make_executor


@pytest.fixture(autouse=True)
def _slurm_installed(slurm_cluster):
    """Slurm's client tools on PATH (installed and started once per session)."""


def sbatch_script(tmp_path, *overrides: str) -> str:
    executor = make_executor(load_config("smoke", ["launcher.kind=slurm", *overrides]), tmp_path)
    return executor._executor._make_submission_file_text("python -m job", "uid")


def test_gpu_job_runs_one_ddp_rank_per_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("VQFLOW_CACHE", str(tmp_path / "shared cache"))
    script = sbatch_script(
        tmp_path,
        "launcher.gpus_per_job=4",
        "launcher.partition=gpu",
        "launcher.account=acc",
        "launcher.qos=high",
        "launcher.constraint=a100",
        "launcher.mem_gb=64",
        "launcher.cpus_per_task=8",
        "launcher.timeout_min=240",
        "launcher.signal_delay_s=420",
    )
    for line in (
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--nodes=1",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--partition=gpu",
        "--account=acc",
        "--qos=high",
        "--constraint=a100",
        "--time=240",
        "--signal=USR2@420",
        "--requeue",
        "--job-name=vqflow-smoke",
    ):
        assert f"#SBATCH {line}\n" in script, line
    assert f"export VQFLOW_CACHE='{tmp_path / 'shared cache'}'" in script, "jobs must share the launcher's cache"
    assert f"export PYTHONPATH={PROJECT_ROOT}" in script


def test_a_cpu_job_is_one_process_and_unset_options_stay_unset(tmp_path):
    script = sbatch_script(tmp_path)
    assert "#SBATCH --ntasks-per-node=1\n" in script
    assert not any(f"--{key}" in script for key in ("gpus-per-node", "partition", "account", "qos", "constraint"))


def test_the_timeout_budget_reaches_submitit(tmp_path):
    executor = make_executor(load_config("smoke", ["launcher.kind=slurm", "launcher.max_num_timeout=5"]), tmp_path)
    assert executor._executor.max_num_timeout == 5
