"""``--dry-run``: the plan and its cost for the paper's configs, without data or full-size weights."""

from __future__ import annotations

import re

import pytest

from benchmarks.core.config import load_config
from benchmarks.launching.plan import GPU_TIME_UNITS, checkpoint_steps, dry_run, evaluation_cells


def train_time(text: str, method: str) -> float:
    """The ``train GPU-...`` column of ``method``'s row (the fifth field)."""
    return float(re.search(rf"^{method}\s.*$", text, flags=re.M).group(0).split()[4].replace(",", ""))


def totals_seconds(text: str) -> list[float]:
    """(training, evaluation) GPU-seconds from the plan's total line, whatever unit it chose."""
    train, unit, evaluation = re.search(
        r"training ([\d,.e+-]+) (GPU-\w+), evaluation ([\d,.e+-]+) GPU-\w+", text
    ).groups()
    scale = dict(GPU_TIME_UNITS)[unit]
    return [float(train.replace(",", "")) * scale, float(evaluation.replace(",", "")) * scale]


def params_by_method(text: str) -> dict[str, float]:
    return {m: float(p) for m, p in re.findall(r"^(\S+)\s+([\d.]+)M\s", text, flags=re.M)}


def test_paper_xl2_parameter_counts(run_cli, tmp_path):
    # data.path points nowhere: the plan must not read data
    out = run_cli("--config", "imagenet-dit-xl2-vqf8", "--dry-run", "--set", f"data.path={tmp_path}/missing").stdout
    params = params_by_method(out)
    assert params["purr"] == pytest.approx(750, abs=5)
    assert params["cfm"] == pytest.approx(675, abs=5)
    assert params["dfm"] == pytest.approx(775, abs=5)
    assert "GPU-hours" in out and "4 methods x 1 seeds = 4" in out


def test_paper_protocol_cells():
    cfg = load_config("imagenet-dit-l2-vqf8")
    steps = checkpoint_steps(cfg)
    assert steps[0] == 100_000 and steps[-1] == 2_000_000 and 1_000_000 in steps
    cells = evaluation_cells(cfg, "purr", steps)
    along = [c for c in cells if c[1] == 100 and c[3] == 1.0 and c[4] == 10_000 and c[2] == 0.9]
    assert [c[0] for c in along] == steps  # FID-10k, 100 steps, tau 0.9 at every checkpoint
    sweep = sorted(c[2] for c in cells if c[0] == 1_000_000 and c[4] == 50_000)
    assert sweep[0] == 0.3 and sweep[-1] == 1.5
    assert (2_000_000, 250, 0.9, 1.3, 50_000) in cells  # final: CFG 1.3, 250 steps, FID-50k
    assert all(c[2] == 1.0 for c in evaluation_cells(cfg, "cfm", steps) if c[0] != 1_000_000)


def test_plan_costs_scale_with_seeds():
    cfg = load_config("smoke")
    one = dry_run(cfg, ["purr"], [0], peak_tflops=100, utilisation=0.5)
    three = dry_run(cfg, ["purr"], [0, 1, 2], peak_tflops=100, utilisation=0.5)
    assert totals_seconds(three) == pytest.approx([3 * s for s in totals_seconds(one)], rel=0.05)
    assert "1 seeds" in one and "3 seeds" in three


def test_a_measured_step_time_replaces_the_assumed_utilisation():
    from benchmarks.launching.plan import StepTime

    cfg = load_config("default", ["eval.enabled=false", "launcher.gpus_per_job=4"])
    text = dry_run(
        cfg, ["purr", "cfm"], [0], peak_tflops=100, utilisation=0.5, step_time=StepTime({"purr": 2.0}, 4, "a test")
    )
    assert "train GPU-hours" in text
    assert train_time(text, "purr") == pytest.approx(2.0 * cfg.train.iterations * 4 / 3600, abs=0.05)
    assert "measured step times (a test; 4 GPU(s) per job): purr 2 s/step" in text
    assert "other methods cost at 50% of 100 TFLOP/s per GPU (assumed utilisation" in text


def test_step_times_come_from_a_previous_runs_manifest():
    from pathlib import Path

    from benchmarks.launching.plan import step_time_from_run

    results = Path(__file__).resolve().parents[2] / "results" / "default"
    measured = step_time_from_run(results, load_config("default"))
    assert measured.gpus == 1 and str(results / "manifest.json") in measured.source
    assert 0.01 < measured.of("purr") < 0.2 and set(measured.seconds) == {"purr", "cfm", "dfm"}
    with pytest.raises(ValueError, match="same backbone and global batch"):
        step_time_from_run(results, load_config("smoke"))


def test_plan_checks_checkpoint_write_against_signal_delay():
    cfg = load_config("imagenet-dit-xl2-vqf8", ["launcher.signal_delay_s=60"])
    text = dry_run(cfg, ["dfm"], [0], peak_tflops=989, utilisation=0.25)
    assert "checkpoint: 12.4 GB" in text
    assert "WARNING: the checkpoint write takes more than half the preemption warning" in text
    assert "WARNING" not in dry_run(
        load_config("imagenet-dit-xl2-vqf8"), ["dfm"], [0], peak_tflops=989, utilisation=0.25
    )


def test_dry_run_takes_a_step_time_on_the_command_line(run_cli):
    out = run_cli(
        "--config",
        "imagenet-dit-xl2-vqf8",
        "--methods",
        "purr",
        "--dry-run",
        "--step-seconds",
        "1.5",
        "--set",
        "launcher.gpus_per_job=8",
    ).stdout
    assert "measured step times (--step-seconds; 8 GPU(s) per job): purr 1.5 s/step" in out
    assert re.search(r"together 6,\d\d\d\.\d GPU-hours", out)  # 1.5 s x 2M steps x 8 GPUs = 6,667 + eval


def test_plan_prints_evaluation_cost_apart_from_training():
    """Per job and in total, evaluation GPU-hours are their own column and figure: the evaluation of
    imagenet-dit-xl2-vqf8 (with its 9 cells x 50k images x 100 steps) makes purr's about 17 GPU-hours."""
    cfg = load_config("imagenet-dit-xl2-vqf8")
    text = dry_run(cfg, ["purr"], [0], peak_tflops=989, utilisation=0.4)
    assert "train GPU-hours" in text and "eval GPU-hours" in text and "eval EFLOP" in text
    row = re.search(r"^purr\s.*$", text, flags=re.M).group(0).split()
    assert float(row[-1]) == pytest.approx(17.4, abs=0.5) and float(row[-2]) == pytest.approx(24.8, abs=0.5)  # EFLOP
    train, evaluation = re.search(r"training ([\d,.]+) GPU-hours, evaluation ([\d,.]+) GPU-hours", text).groups()
    assert float(train.replace(",", "")) == pytest.approx(298, abs=1) and float(evaluation) == pytest.approx(
        17.4, abs=0.5
    )


def test_small_plans_print_gflop_and_gpu_seconds_not_zeros():
    text = dry_run(load_config("smoke"), ["purr", "cfm"], [0], peak_tflops=989, utilisation=0.4)
    assert "train GFLOP " in text and "eval GFLOP" in text and "GPU-seconds" in text
    assert "PFLOP" not in text and "GPU-hours" not in text
    for method in ("purr", "cfm"):
        row = re.search(rf"^{method}\s+(.*)$", text, flags=re.M).group(1).split()
        train, train_s, eval_, eval_s = (float(row[i].replace(",", "")) for i in (2, 3, 5, 6))
        assert train > 1 and eval_ > 1 and train_s > 0 and eval_s > 0, row  # 58 GFLOP, 48 GFLOP, GPU-seconds
    assert all(s > 0 for s in totals_seconds(text))


def test_codebook_scaling_plans_purr_at_k16384():
    """The study's largest K: purr's and dfm's K-way heads dominate a mini/2 step, cfm's does not."""
    cfg = load_config("codebook-scaling", ["data.path=/nonexistent"])  # the plan reads no data
    text = dry_run(cfg, ["purr", "cfm", "dfm"], [0, 1, 2], peak_tflops=989, utilisation=0.25)
    assert "tokenizer vqvae (K=16384, d=4)" in text and "3 methods x 3 seeds = 9" in text
    gflop = {m: float(re.search(rf"^{m}\s+\S+\s+([\d.]+)", text, flags=re.M).group(1)) for m in ("purr", "cfm", "dfm")}
    assert gflop["purr"] > 5 * gflop["cfm"] and gflop["dfm"] > 5 * gflop["cfm"]
