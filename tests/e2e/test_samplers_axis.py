"""Samplers end to end: a run evaluates Euler, Heun, dopri5 and MaskGIT cells side by side
without overwriting each other, records NFE and sampling seconds per image, exports with
``benchmarks.sample --sampler`` (from checkpoints or exported EMA weights), and its report plots
FID against NFE."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.storage.run_dir import RunDir, read_sidecar, sidecar_path
from tests.e2e.test_sample_score import cli

CELLS = (
    "eval.cells=[{steps: 8}, {steps: 8, sampler: heun, at: last, methods: [purr]},"
    " {steps: 4, sampler: 'dopri5:rtol=1e-2,atol=1e-2', at: last, methods: [purr]},"
    " {steps: 8, sampler: maskgit, at: last, methods: [dfm]}]"
)


@pytest.fixture(scope="module")
def sampler_run(tmp_path_factory, shared_cache):
    run = tmp_path_factory.mktemp("samplers") / "run"
    cli(
        "benchmarks.run",
        "--config",
        "smoke",
        "--methods",
        "purr,dfm",
        "--out",
        str(run),
        "--no-progress",
        "--set",
        "train.iterations=20",
        "train.checkpoint_every=20",
        "eval.temperatures=[]",
        CELLS,
        cache=shared_cache,
    )
    return run


@pytest.mark.slow
def test_each_sampler_gets_its_rows_nfe_and_seconds(sampler_run):
    rows = pd.read_csv(RunDir(sampler_run).metrics)
    got = {(r.method, r.sampler): r for r in rows.itertuples()}
    assert set(got) == {
        ("purr", "euler"),
        ("purr", "heun"),
        ("purr", "dopri5:rtol=0.01,atol=0.01"),
        ("dfm", "euler"),
        ("dfm", "maskgit:choice_temperature=4.5"),
    }
    assert got["purr", "euler"].nfe == got["dfm", "euler"].nfe == 8
    assert got["purr", "heun"].nfe == 2 * 8 - 1 and got["dfm", "maskgit:choice_temperature=4.5"].nfe == 8
    assert got["purr", "dopri5:rtol=0.01,atol=0.01"].nfe >= 6  # counted, one dopri5 step is 6 evaluations
    assert (rows["sample_s_per_image"] > 0).all() and (rows["sample_cpu_s_per_image"] > 0).all()
    assert got["purr", "heun"].fid != got["purr", "euler"].fid


@pytest.mark.slow
def test_grids_and_traces_keep_samplers_apart(sampler_run):
    job = RunDir(sampler_run).job("purr", 0)
    grids = sorted(job.samples_dir.glob("*.png"))
    assert [g.name for g in grids] == [
        "dopri5-rtol-0.01-atol-0.01_steps4_tau0.9_cfg1_n100.png".join(["step000000020_", ""]),
        "heun_steps8_tau0.9_cfg1_n100.png".join(["step000000020_", ""]),
        "step000000020_steps8_tau0.9_cfg1_n100.png",
    ]
    assert {read_sidecar(sidecar_path(g)).sampler for g in grids} == {"euler", "heun", "dopri5:rtol=0.01,atol=0.01"}
    traces = pd.read_csv(RunDir(sampler_run).traces)
    purr = traces[traces["method"] == "purr"]
    assert {"euler", "heun"} <= set(purr["sampler"])  # dopri5's has a trace only when one batch held the cell
    assert len(purr[purr["sampler"] == "heun"]) == len(purr[purr["sampler"] == "euler"]) == 8


@pytest.mark.slow
def test_sample_cli_takes_a_sampler_and_refuses_others(sampler_run, shared_cache, tmp_path):
    base = ["--run", str(sampler_run), "--num-samples", "20", "--no-progress"]
    cli(
        "benchmarks.sample",
        *base,
        "--method",
        "dfm",
        "--sampler",
        "maskgit",
        "--out",
        str(tmp_path / "m.npz"),
        cache=shared_cache,
    )
    cli(
        "benchmarks.sample",
        *base,
        "--method",
        "purr",
        "--sampler",
        "heun",
        "--out",
        str(tmp_path / "h.npz"),
        cache=shared_cache,
    )
    assert (tmp_path / "m.npz").is_file() and (tmp_path / "h.npz").is_file()
    refused = cli(
        "benchmarks.sample",
        *base,
        "--method",
        "dfm",
        "--sampler",
        "heun",
        "--out",
        str(tmp_path / "x.npz"),
        cache=shared_cache,
        check=False,
    )
    assert refused.returncode == 2
    assert "--sampler 'heun': method 'dfm' has no such sampler; its samplers: euler, maskgit" in refused.stderr


@pytest.mark.slow
def test_report_plots_fid_against_nfe_per_sampler(sampler_run):
    report = RunDir(sampler_run).report
    curve = pd.read_csv(report / "figures" / "fid_vs_nfe.csv")
    assert set(curve["sampler"]) >= {"euler", "heun", "maskgit:choice_temperature=4.5"}
    text = (report / "report.md").read_text()
    assert "### Best sampler within an inference budget" in text and "fid_vs_nfe.png" in text


@pytest.mark.slow
def test_exported_weights_sample_as_the_checkpoint(sampler_run, shared_cache, tmp_path):
    """A run folder that keeps only ``export_weights``' EMA files (as committed reference runs do)
    samples exactly what the checkpoint samples, and the files hold no training state."""
    kept = tmp_path / "kept"
    shutil.copytree(sampler_run, kept, ignore=shutil.ignore_patterns("samples", "report", "submitit"))
    out = cli("benchmarks.export_weights", str(kept), cache=shared_cache).stdout
    job = RunDir(kept).job("purr", 0)
    (checkpoint,) = job.checkpoints()
    assert f"wrote {job.weights(20)}" in out and job.weight_files() == [job.weights(20)]
    weights = torch.load(job.weights(20), weights_only=True)
    assert set(weights) == {"config", "method", "seed", "step", "ema", "tokenizer"} and weights["step"] == 20
    assert job.weights(20).stat().st_size < checkpoint.stat().st_size / 3
    for folder in RunDir(kept).jobs():
        shutil.rmtree(folder.checkpoints_dir)

    arrays = []
    for run in (sampler_run, kept):
        npz = tmp_path / f"{run.name}.npz"
        args = ["--run", str(run), "--method", "purr", "--sampler", "heun", "--num-samples", "12", "--out", str(npz)]
        cli("benchmarks.sample", *args, "--no-progress", cache=shared_cache)
        with np.load(npz) as data:
            arrays.append(data["arr_0"])
    assert np.array_equal(*arrays)

    refused = cli("benchmarks.export_weights", str(kept), cache=shared_cache, check=False)
    assert refused.returncode == 2 and f"{kept} holds no checkpoints" in refused.stderr

    weights["tokenizer"]["codebook_sha256"] = "0" * 64  # as if trained on another machine's VQ-VAE
    torch.save(weights, job.weights(20))
    refused = cli("benchmarks.sample", *args[:-1], str(tmp_path / "x.npz"), cache=shared_cache, check=False)
    assert refused.returncode == 2 and "its samples would decode the wrong codes" in refused.stderr
