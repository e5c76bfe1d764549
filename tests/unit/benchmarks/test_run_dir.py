"""The run folder's one owner (``benchmarks.storage.run_dir``): no other module spells its names;
its layout (that earlier folders keep); checkpoints, jobs and grids as listed and read back;
the grid sidecar the evaluator writes; the rules for config changes."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch
from torchvision.utils import make_grid

from benchmarks.storage.run_dir import (
    CHECKPOINT_PREFIX,
    FILE_NAMES,
    SEED_PREFIX,
    ConfigChangeRefused,
    GridLayout,
    RunDir,
    SampleGrid,
    checkpoint_step,
    layout_version,
    new_folder_entry,
    parse_job_key,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ["backbones", "methods", "benchmarks", "reports"]
OWNER = ROOT / "benchmarks" / "storage" / "run_dir.py"


def forbidden_patterns() -> list[re.Pattern]:
    """What spells a run-folder name in a string: each of ``FILE_NAMES`` not preceded by a letter,
    digit or underscore (the checkpoint prefix only where a step number, a glob or a format field
    follows: ``step_s`` is a key of gpu_check's report), and a job folder ``<method>/seed<k>``."""
    patterns = [rf"(?<!\w){re.escape(name)}" for name in FILE_NAMES if name != CHECKPOINT_PREFIX]
    patterns += [rf"(?<!\w){CHECKPOINT_PREFIX}(\d|\*|$)", rf"/{SEED_PREFIX}(\d|\*|$)", rf"(?<!\w){SEED_PREFIX}\*"]
    return [re.compile(p) for p in patterns]


def string_constants(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a module (f-string parts included) except
    docstrings: bare string statements (of the module, a class, a function or an attribute)."""
    tree = ast.parse(path.read_text())
    bare = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare
    ]


def spelled_names(paths: list[Path]) -> list[str]:
    patterns = forbidden_patterns()
    return [
        f"{path}:{line}: {text!r}"
        for path in paths
        for line, text in string_constants(path)
        if any(p.search(text) for p in patterns)
    ]


def test_only_run_dir_spells_the_run_folder_names():
    modules = [p for package in SCANNED for p in sorted((ROOT / package).rglob("*.py")) if p != OWNER]
    assert not spelled_names(modules)


def test_the_name_check_finds_literals_and_spares_docstrings(tmp_path):
    module = tmp_path / "planted.py"
    module.write_text(
        '"""Reads metrics.csv."""\nX = 1\n"""The step_000000040.pt of a job."""\n'
        'def f(run, step, method, seed):\n    """job.lock"""\n'
        '    a = run / "metrics.csv"\n    b = f"step_{step:09d}.pt"\n    c = run.glob("*/seed*")\n'
        '    d = f"{method}/seed{seed}"\n    return {"step_s": 1, "seed": seed}\n'
    )
    found = spelled_names([module])
    assert [line.split(":")[1] for line in found] == ["6", "7", "8", "9"], found
    assert spelled_names([OWNER]), "run_dir.py itself spells them (the check reads what it should)"


# ----------------------------------------------------------------------------- layout


def test_layout_of_existing_folders(tmp_path):
    """The paths folders written so far have (changing one breaks resuming and reading them)."""
    run = RunDir(tmp_path)
    job = run.job("purr", 3)
    grid = job.grid(40, "steps8_tau0.9_cfg1_n100")
    expected = [
        (run.manifest, "manifest.json"),
        (run.metrics, "metrics.csv"),
        (run.traces, "traces.csv"),
        (run.floor, "tokenizer_floor.json"),
        (run.submitit, "submitit"),
        (run.report_file, "report/report.md"),
        (job.path, "purr/seed3"),
        (job.checkpoint(40), "purr/seed3/checkpoints/step_000000040.pt"),
        (job.train_log, "purr/seed3/train_log.csv"),
        (job.events, "purr/seed3/job_events.jsonl"),
        (job.lock, "purr/seed3/job.lock"),
        (job.tensorboard, "tensorboard/purr-seed3"),
        (grid, "samples/purr/seed3/step000000040_steps8_tau0.9_cfg1_n100.png"),
        (sidecar_path(grid), "samples/purr/seed3/step000000040_steps8_tau0.9_cfg1_n100.grid.json"),
    ]
    assert [path.relative_to(tmp_path).as_posix() for path, _ in expected] == [name for _, name in expected]
    assert job.key == "purr/seed3" and parse_job_key(job.key) == ("purr", 3)
    assert parse_job_key("purr/seedx") is None and parse_job_key("seed0") is None


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def test_checkpoints_jobs_and_trained_steps(tmp_path):
    run = RunDir(tmp_path)
    job = run.job("purr", 0)
    for step in (200, 40, 1000):
        touch(job.checkpoint(step))
    touch(job.checkpoints_dir / "step_000002000.pt.corrupt")
    touch(job.checkpoints_dir / ".step_000003000.pt.1a2b.tmp")
    assert [checkpoint_step(p) for p in job.checkpoints()] == [40, 200, 1000] and job.newest_step() == 1000
    touch(run.job("cfm", 1).train_log)  # a job folder without checkpoints
    touch(run.job("cfm", 1).grid(40, "steps8_tau1_cfg1_n100"))  # samples/cfm/seed1 is not a job folder
    touch(tmp_path / "cfm" / "seedling" / "x")
    assert [j.key for j in run.jobs()] == ["cfm/seed1", "purr/seed0"]
    assert run.trained_steps() == {"purr/seed0": 1000} and run.job("cfm", 1).newest_step() == 0


def test_grids_at_a_step_by_cell_tag(tmp_path):
    job = RunDir(tmp_path).job("purr", 0)
    for step, tag in [(40, "steps8_tau0.9_cfg1_n100"), (40, "steps8_tau1.2_cfg1_n100"), (400, "steps8_tau1_cfg1_n100")]:
        touch(job.grid(step, tag))
    touch(sidecar_path(job.grid(40, "steps8_tau0.9_cfg1_n100")))
    assert list(job.grids_at(40)) == ["steps8_tau0.9_cfg1_n100", "steps8_tau1.2_cfg1_n100"]


def test_layout_version_is_recorded_for_new_folders_only():
    assert new_folder_entry({}) == {"run_dir_layout": 2} and layout_version({"run_dir_layout": 2}) == 2
    assert new_folder_entry({"config": {}}) == {} and layout_version({"config": {}}) == 1


# ----------------------------------------------------------------------------- sample grids


@pytest.mark.parametrize(
    "n,per_row,classes,full_rows,labels",
    [
        (16, 10, 10, 1, list(range(10))),  # a full row and 6 images: the full row only
        (5, 10, 10, 1, list(range(5))),  # not even one full row: all of it
        (20, 10, 5, 2, list(range(5)) * 2),  # each column holds one class
        (30, 10, 3, 3, None),  # 3 classes in 10 columns: a column's class changes from row to row
        (64, 8, 1000, 8, None),
    ],
)
def test_grid_layout_is_torchvisions_tiling(n, per_row, classes, full_rows, labels):
    layout = GridLayout.tiled([i % classes for i in range(n)], per_row, tile=4)
    image = make_grid(torch.zeros(n, 1, 4, 4), nrow=per_row, padding=layout.padding)
    step = layout.tile + layout.padding
    assert image.shape[1:] == (layout.rows * step + layout.padding, layout.columns * step + layout.padding)
    assert layout.full_rows == full_rows and layout.full_height == full_rows * step + layout.padding
    assert layout.column_labels() == (None if labels is None else [str(c) for c in labels])


def test_evaluator_writes_a_sidecar_beside_each_grid(tmp_path, toy_latents):
    from benchmarks.core.config import load_config
    from benchmarks.evaluation.evaluator import Cell, Evaluator

    cfg = load_config("smoke", ["eval.grid_samples=24"])
    evaluator = Evaluator(cfg, toy_latents, tmp_path, progress=False)
    event = SimpleNamespace(method=SimpleNamespace(name="purr"), seed=1, step=40)
    cell = Cell(steps=8, temperature=0.9, cfg_scale=1.0, num_samples=100)
    images = torch.arange(30, dtype=torch.uint8).view(30, 1, 1, 1).expand(30, 1, 32, 32).contiguous()
    path = evaluator.save_grid(images, event, cell)
    assert path == RunDir(tmp_path).job("purr", 1).grid(40, cell.tag)
    grid = read_sidecar(sidecar_path(path))
    assert (grid.path, grid.method, grid.seed, grid.step, grid.sampler) == (path, "purr", 1, 40, "euler")
    assert (grid.steps, grid.temperature, grid.cfg_scale, grid.n_samples) == (8, 0.9, 1.0, 100)
    assert grid.layout == GridLayout(
        tile=32, padding=2, rows=3, columns=10, shown=24, labels=tuple(i % 10 for i in range(24))
    )
    png = matplotlib.image.imread(path)
    assert png.shape[:2] == (3 * 34 + 2, 10 * 34 + 2)
    for i in (0, 13, 23):  # tile i holds sample i
        r, c = divmod(i, 10)
        assert round(float(png[2 + r * 34 + 16, 2 + c * 34 + 16, 0]) * 255) == i
    manifest = {"run_dir_layout": 2}
    assert RunDir(tmp_path).grids("purr", manifest) == [grid]


def test_a_damaged_sidecar_is_named(tmp_path):
    path = touch(tmp_path / "samples/purr/seed0/step000000040_x.grid.json")
    path.write_text('{"image": "x.png"}')
    with pytest.raises(ValueError, match=re.escape(str(path))):
        RunDir(tmp_path).grids("purr", {"run_dir_layout": 2})


def grid_png(path: Path, rows: int, columns: int, tile: int) -> None:
    matplotlib.image.imsave(path, np.ones((rows * (tile + 2) + 2, columns * (tile + 2) + 2)), cmap="gray")


def test_legacy_grids_read_names_and_pixel_sizes(tmp_path):
    """Layout 1: the cell from the file name, the tiling inferred from the PNG's size."""
    run = RunDir(tmp_path)
    folder = run.job("purr", 2).samples_dir
    folder.mkdir(parents=True)
    grid_png(folder / "step000000040_steps8_tau0.9_cfg1_n20.png", rows=2, columns=10, tile=4)
    grid_png(folder / "step000000040_steps8_tau1.2_cfg1.5.png", rows=3, columns=7, tile=4)  # no sample count
    grid_png(folder / "step000000040_steps8_tau1_cfg1_n20.png", rows=2, columns=10, tile=5)  # another tile size
    touch(folder / "notes.png")
    manifest = {"config": {"data": {"image_size": 4}, "eval": {"grid_samples": 24}}, "latents": {"num_classes": 10}}
    grids = {g.temperature: g for g in run.grids("purr", manifest)}
    assert sorted(grids) == [0.9, 1.0, 1.2]
    first = grids[0.9]
    assert (first.seed, first.step, first.steps, first.cfg_scale, first.n_samples) == (2, 40, 8, 1.0, 20)
    assert first.sampler is None
    assert first.layout == GridLayout(4, 2, 2, 10, 20, tuple(i % 10 for i in range(20)))
    assert first.layout.column_labels() == [str(c) for c in range(10)]
    assert grids[1.2].n_samples is None and grids[1.2].layout.shown == 24 and grids[1.2].layout.column_labels() is None
    assert grids[1.0].layout is None


# ----------------------------------------------------------------------------- config changes


def config(iterations: int = 20, schedule: str = "constant", temperatures=(0.8,), partition=None) -> dict:
    return {
        "train": {"iterations": iterations, "lr_schedule": schedule},
        "eval": {"temperatures": list(temperatures)},
        "launcher": {"partition": partition},
    }


def folder(tmp_path, trained: dict[str, int], saved: dict | None = None) -> tuple[RunDir, dict]:
    run = RunDir(tmp_path)
    for key, step in trained.items():
        method, seed = parse_job_key(key)
        touch(run.job(method, seed).checkpoint(step))
    return run, {"config": saved or config(), "methods": ["purr", "cfm"], "seeds": [0]}


def test_config_changes_a_folder_accepts(tmp_path):
    run, manifest = folder(tmp_path, {"purr/seed0": 20, "cfm/seed0": 20})
    assert run.accept_config({}, config(40)) == []  # no run there yet
    assert run.accept_config(manifest, config(partition="gpu")) == []  # where the jobs run
    assert run.accept_config(manifest, config(temperatures=(0.8, 1.2))) == [
        f"eval.temperatures changes from [0.8] to [0.8, 1.2] in {tmp_path}"
    ]
    assert run.accept_config(manifest, config(40)) == [f"train.iterations changes from 20 to 40 in {tmp_path}"]


def test_config_changes_a_folder_refuses(tmp_path):
    run, manifest = folder(tmp_path, {"purr/seed0": 20, "cfm/seed0": 10})
    assert run.accept_config(manifest, config(temperatures=(1.2,)))  # no evaluated cell yet: eval.* may change
    run.metrics.write_text("method,seed,step\ncfm,0,10\n")
    with pytest.raises(ConfigChangeRefused, match=r"eval.temperatures: \[0.8\] in the run, \[1.2\] now"):
        run.accept_config(manifest, config(temperatures=(1.2,)))  # cfm has not finished training
    with pytest.raises(ConfigChangeRefused, match="train.iterations: 20 in the run, 10 now"):
        run.accept_config(manifest, config(10))
    decaying = {**manifest, "config": config(schedule="cosine")}
    with pytest.raises(ConfigChangeRefused, match="train.lr_schedule=cosine decays over train.iterations"):
        run.accept_config(decaying, config(40, schedule="cosine"))


def test_a_folder_without_results_takes_any_config(tmp_path):
    run, manifest = folder(tmp_path, {})
    assert run.accept_config(manifest, config(10, schedule="cosine")) == [
        f"{tmp_path} holds no trained step yet; its config is replaced"
    ]
    run.metrics.write_text("method,seed,step\npurr,0,20\n")
    with pytest.raises(ConfigChangeRefused):
        run.accept_config(manifest, config(10))


def test_sidecars_round_trip(tmp_path):
    path = touch(RunDir(tmp_path).job("cfm", 0).grid(8, "steps4_tau1_cfg2_n9"))
    grid = SampleGrid(path, "cfm", 0, 8, "euler", 4, 1.0, 2.0, 9, GridLayout.tiled([i % 3 for i in range(9)], 3, 6))
    written = write_sidecar(grid)
    assert json.loads(written.read_text())["labels"] == [0, 1, 2] * 3
    assert read_sidecar(written) == grid
