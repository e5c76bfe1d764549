"""The sampler as an evaluation axis: config validation names the method and its samplers, cells
carry the sampler's label into their keys, file names and seeds, and Euler cells keep theirs."""

from __future__ import annotations

import pytest

from benchmarks.core.config import ConfigError, load_config, sampler_errors
from benchmarks.evaluation.evaluator import Cell, cell_seed
from benchmarks.evaluation.sampling import mean_trace
from methods import get_method


def dfm_samplers() -> str:
    """dfm's samplers as the errors list them (plugins registered by other tests included)."""
    return ", ".join(get_method("dfm").supported_samplers())


def test_unsupported_sampler_names_the_method_and_choices():
    with pytest.raises(ConfigError) as error:
        load_config("smoke", ["eval.cells=[{steps: 4, sampler: heun}]"])
    assert str(error.value) == (
        f"eval.cells[0].sampler: method 'dfm' has no sampler 'heun'; its samplers: {dfm_samplers()} "
        "(name the cell's methods in eval.cells[0].methods)"
    )
    assert "maskgit" in dfm_samplers() and "heun" not in dfm_samplers()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "unknown sampler 'nope'"),
        ("dopri5:rtol=x", "dopri5"),
        ("maskgit:speed=2", "maskgit"),
    ],
)
def test_bad_sampler_spec_is_a_config_error(spec, message):
    with pytest.raises(ConfigError, match=rf"eval.cells\[0\].sampler: .*{message}"):
        load_config("smoke", [f"eval.cells=[{{steps: 4, sampler: '{spec}', methods: [purr]}}]"])


def test_cell_methods_limit_where_a_sampler_must_run():
    cfg = load_config("smoke", ["eval.cells=[{steps: 8}, {steps: 4, sampler: maskgit, methods: [dfm]}]"])
    assert cfg.eval.cells[1].methods == ["dfm"]
    assert sampler_errors(cfg, ["purr", "dfm"]) == []
    sweep = load_config("smoke", ["eval.sweep_sampler=heun", "methods={purr: {}, cfm: {}}"])
    assert sampler_errors(sweep, ["purr", "dfm"]) == [
        f"eval.sweep_sampler: method 'dfm' has no sampler 'heun'; its samplers: {dfm_samplers()}"
    ]


def test_euler_cells_keep_their_tags_and_seeds():
    """Euler's file names and sampling seeds are those written before samplers were an axis."""
    cell = Cell(20, 0.9, 1.0, 500)
    assert cell.tag == "steps20_tau0.9_cfg1_n500"
    assert cell_seed(3, 640, cell) == (3 * 1_000_003 + 640 * 7919 + 20 * 131 + 900 * 17 + 1000) % (2**63 - 1)


def test_other_samplers_get_their_own_tags_and_seeds():
    euler, heun = Cell(8, 1.0, 1.0, 100), Cell(8, 1.0, 1.0, 100, "heun")
    dopri = Cell(8, 1.0, 1.0, 100, "dopri5:rtol=0.001,atol=0.001")
    assert heun.tag == "heun_steps8_tau1_cfg1_n100"
    assert dopri.tag == "dopri5-rtol-0.001-atol-0.001_steps8_tau1_cfg1_n100"
    assert len({cell_seed(0, 40, c) for c in (euler, heun, dopri)}) == 3


def test_traces_of_differing_time_grids_are_not_averaged():
    same = [(2, {"t": [0.0, 0.5], "entropy": [1.0, 0.5]}), (1, {"t": [0.0, 0.5], "entropy": [4.0, 2.0]})]
    assert mean_trace(same) == {"t": [0.0, 0.5], "entropy": [2.0, 1.0]}
    adaptive = [(2, {"t": [0.0, 0.3], "entropy": [1.0, 0.5]}), (2, {"t": [0.0, 0.2, 0.6], "entropy": [1, 1, 1]})]
    assert mean_trace(adaptive) == {}
