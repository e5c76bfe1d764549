"""The command line: listing, clear errors with exit status 2, configs and their validation."""

from __future__ import annotations

import pytest

from benchmarks.core.config import ConfigError, load_config


def test_list_shows_methods_and_configs(run_cli):
    out = run_cli("--list").stdout
    for name in [
        "purr",
        "cfm",
        "cfm-endpoint",
        "dfm",
        "dfm-uniform",
        "smoke",
        "default",  # methods, configs
        "mnist5k",
        "imagefolder",
        "shards",
        "vqvae",
        "vq-f8",
        "mnist-cnn",
        "inception-v3-compat",
        "fid",
        "kid_mean",
        "isc_std",
        "class_accuracy",
    ]:  # data sets, tokenizers, extractors, metrics
        assert name in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--methods", "purr,nope"], "unknown method 'nope'"),
        (["--config", "no-such-config"], "unknown config 'no-such-config'"),
        (["--set", "train.iterationz=3"], "train.iterationz"),
        (["--set", "train.batch_size=big"], "train.batch_size"),
        (["--set", "methods.purr.lr=0.1"], "methods.purr.lr"),
        (["--set", "methods.purr.temperature_grid=1"], "methods.purr.temperature_grid"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(run_cli, args, needle, tmp_path):
    proc = run_cli(*args, "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_method_lists_the_valid_ones(run_cli, tmp_path):
    proc = run_cli("--methods", "purrr", "--out", str(tmp_path), check=False)
    assert "registered methods: cfm, cfm-endpoint, dfm, dfm-uniform, purr" in proc.stderr


def test_every_shipped_config_loads():
    from benchmarks.core.config import available_configs

    for name in available_configs():
        cfg = load_config(name)
        assert cfg.name == name


def test_shared_budget_key_in_a_method_section_is_an_error():
    with pytest.raises(ConfigError, match=r"methods\.cfm\.batch_size: 'batch_size' is a shared budget key"):
        load_config("smoke", ["methods.cfm.batch_size=8"])


def test_overrides_are_typed():
    cfg = load_config("smoke", ["train.lr=1e-3", "train.betas=[0.8, 0.9]", "eval.temperatures=[0.5]"])
    assert cfg.train.lr == 1e-3 and cfg.train.betas == (0.8, 0.9) and cfg.eval.temperatures == [0.5]


def _all_options(parser):
    """(parser prog, option) for every argument of a parser and its sub-commands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_options(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield parser.prog, action


def test_every_cli_option_has_help_text():
    import benchmarks.encode
    import benchmarks.run
    import benchmarks.tokenizer
    import reports.__main__

    missing = [
        f"{prog} {'/'.join(action.option_strings) or action.dest}"
        for module in (benchmarks.run, benchmarks.encode, benchmarks.tokenizer, reports.__main__)
        for prog, action in _all_options(module.parser())
        if not action.help
    ]
    assert not missing, f"options without help text: {missing}"
