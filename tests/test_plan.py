"""``--dry-run``: the plan and its cost for the paper's configs, without data or full-size weights."""
from __future__ import annotations

import re

import pytest

from benchmarks.config import load_config
from benchmarks.launching.plan import checkpoint_steps, dry_run, evaluation_cells


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
    seconds = lambda text: float(re.search(r"^purr\s.*\s([\d.e-]+)$", text, flags=re.M).group(1))  # noqa: E731
    assert seconds(one) > 0
    assert seconds(three) == pytest.approx(3 * seconds(one), rel=0.05)
    assert "1 seeds" in one and "3 seeds" in three


def test_small_plans_print_gflop_and_gpu_seconds_not_zeros():
    text = dry_run(load_config("smoke"), ["purr", "cfm"], [0], peak_tflops=989, utilisation=0.4)
    assert "train GFLOP " in text and "eval GFLOP" in text and "GPU-seconds" in text
    assert "PFLOP" not in text and "GPU-hours" not in text
    for method in ("purr", "cfm"):
        row = re.search(rf"^{method}\s+(.*)$", text, flags=re.M).group(1).split()
        train, eval_, gpu = (float(row[i].replace(",", "")) for i in (2, 4, 5))
        assert train > 1 and eval_ > 1 and gpu > 0, row  # 58 GFLOP, 48 GFLOP, 0.00027 GPU-seconds
    total = float(re.search(r"^total: ([\d.e-]+) GPU-seconds", text, flags=re.M).group(1))
    assert total > 0
