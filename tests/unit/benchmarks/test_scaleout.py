"""Scale-out without a cluster: which jobs a submission still has to run (cells added to a
finished run), a job's ranks over ``launcher.nodes``, the checks on ranks and batch, and the
plan's per-job resources."""

from __future__ import annotations

import pytest

from benchmarks.core.config import ConfigError, load_config
from benchmarks.core.distributed import DistEnv
from benchmarks.launching.launch import LaunchError, executor_parameters, finished, missing_cells, record_event
from benchmarks.storage.results import append_rows
from benchmarks.storage.run_dir import RunDir

SMOKE = ["train.iterations=20", "eval.temperatures=[]"]
EXTRA_CELL = "eval.cells=[{steps: 8, at: every}, {steps: 4, at: last}]"


def _finished_run(tmp_path, cfg):
    """A run folder whose purr/seed0 finished ``cfg`` with every cell of its last checkpoint."""
    record_event(tmp_path, "purr", 0, "start", from_step=0)
    record_event(tmp_path, "purr", 0, "done", step=cfg.train.iterations)
    rows = [
        {
            "method": "purr",
            "seed": 0,
            "step": cfg.train.iterations,
            "sampler": "euler",
            "steps": cell.steps,
            "temperature": cell.temperature,
            "cfg_scale": cell.cfg_scale,
            "n_samples": cell.num_samples,
            "feature_extractor": "x",
            "ref_stats": "y",
            "fid": 1.0,
        }
        for cell in missing_cells(tmp_path, "purr", 0, cfg)
    ]
    append_rows(RunDir(tmp_path).metrics, rows)


def test_a_finished_job_with_all_cells_is_finished(tmp_path):
    cfg = load_config("smoke", SMOKE)
    _finished_run(tmp_path, cfg)
    assert finished(tmp_path, "purr", 0, cfg)
    assert not finished(tmp_path, "cfm", 0, cfg)


def test_an_added_eval_cell_makes_the_job_unfinished(tmp_path):
    _finished_run(tmp_path, load_config("smoke", SMOKE))
    more = load_config("smoke", [*SMOKE, EXTRA_CELL])
    assert not finished(tmp_path, "purr", 0, more)
    (cell,) = missing_cells(tmp_path, "purr", 0, more)
    assert (cell.steps, cell.temperature) == (4, 0.9)  # purr's method temperature
    swept = load_config("smoke", ["train.iterations=20", "eval.temperatures=[1.5]"])
    assert [c.temperature for c in missing_cells(tmp_path, "purr", 0, swept)] == [1.5]


def test_evaluation_off_needs_no_cells(tmp_path):
    cfg = load_config("smoke", [*SMOKE, "eval.enabled=false"])
    record_event(tmp_path, "purr", 0, "done", step=20)
    assert finished(tmp_path, "purr", 0, cfg)


def test_a_job_spans_launcher_nodes(tmp_path):
    cfg = load_config("smoke", ["launcher.kind=slurm", "launcher.nodes=2", "launcher.gpus_per_job=4"])
    params = executor_parameters(cfg.launcher, "x", [])
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    cpu = load_config("smoke", ["launcher.kind=slurm", "launcher.nodes=2"])
    assert executor_parameters(cpu.launcher, "x", [])["tasks_per_node"] == 1
    local = load_config("smoke", ["launcher.kind=submitit-local", "launcher.nodes=2"])
    with pytest.raises(LaunchError, match="launcher.nodes=2 needs --launcher slurm"):
        executor_parameters(local.launcher, "x", [])


def test_batch_must_divide_by_nodes_times_gpus():
    load_config("smoke", ["launcher.nodes=2", "launcher.gpus_per_job=4", "train.batch_size=32"])
    message = r"train.batch_size=36 must be divisible by the world size 8 = launcher.nodes=2 x launcher.gpus_per_job=4"
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", ["launcher.nodes=2", "launcher.gpus_per_job=4", "train.batch_size=36"])
    with pytest.raises(ConfigError, match="world size 3 = launcher.nodes=3 x launcher.gpus_per_job=0"):
        load_config("smoke", ["launcher.nodes=3"])
    with pytest.raises(ConfigError, match="launcher.nodes must be >= 1"):
        load_config("smoke", ["launcher.nodes=0"])


def test_torchrun_ranks_refuse_submission_and_bad_batch(capsys):
    from benchmarks.run import check_ranks

    cfg = load_config("smoke", ["launcher.kind=submitit-local"])
    with pytest.raises(SystemExit) as exit_:
        check_ranks(cfg, DistEnv(0, 2), dry_run=False)
    assert exit_.value.code == 2 and "use --launcher local" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_ranks(load_config("smoke", []), DistEnv(1, 3), dry_run=False)
    assert "train.batch_size=32 must be divisible by torchrun's world size 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_ranks(load_config("smoke", ["launcher.nodes=2"]), DistEnv(), dry_run=False)
    assert "launcher.nodes=2 needs --launcher slurm" in capsys.readouterr().err
    check_ranks(load_config("smoke", ["launcher.nodes=2"]), DistEnv(), dry_run=True)


def test_dry_run_shows_nodes_and_wall_time_per_job():
    from benchmarks.launching.plan import dry_run

    cfg = load_config("smoke", ["launcher.kind=slurm", "launcher.nodes=2", "launcher.gpus_per_job=4"])
    plan = dry_run(cfg, ["purr", "cfm"], [0], peak_tflops=100.0, utilisation=0.5)
    line = next(line for line in plan.splitlines() if line.startswith("per job:"))
    assert "2 node(s) x 4 GPU(s) (launcher.nodes x launcher.gpus_per_job) = 8 rank(s)" in line
    assert "wall time per job about purr" in line and "GPU time / 8" in line
