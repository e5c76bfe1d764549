"""The repository stands on its own: no references to files outside it, links that resolve, a
licence and a citation file."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ["../" + "shared", "SPEC" + ".md", "ENVIRONMENT" + ".md", "TOKENIZERS" + ".md"]
"""Names of the project's private notes, which users do not have (spelt in pieces so this file
does not match itself)."""


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    files = []
    for name in names:
        path = ROOT / name
        if path.is_file() and path.suffix not in {".png", ".pdf", ".pt", ".npz", ".npy"}:
            try:
                path.read_text()
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


def test_nothing_refers_to_files_outside_the_repository():
    hits = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in tracked_text_files()
        for needle in OUTSIDE
        if needle in path.read_text()
    ]
    assert not hits, hits


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_markdown_links_and_anchors_resolve():
    """Every relative link of the README, CONTRIBUTING.md and docs/ names a file that exists and,
    with ``#anchor``, a heading of that file."""
    broken = []
    for doc in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target) if target else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path.read_text()):
                broken.append(f"{doc.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, broken
    assert "docs/methods.md" in (ROOT / "README.md").read_text()


def test_readme_is_a_front_door_of_at_most_12_kb():
    assert len((ROOT / "README.md").read_bytes()) <= 12_000


def test_license_and_citation():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    for key in ("message", "title", "authors", "type"):
        assert citation[key], key
    paper = citation["references"][0]
    assert "2510.01478" in paper["url"] and paper["year"] == 2026 and paper["authors"]


PACKAGES = ["backbones", "methods", "benchmarks", "reports"]
"""The project's packages, lowest first: networks know nothing of methods or of the pipeline;
methods know only the networks (the plugin contract); the pipeline's library knows both; reports
read what the pipeline's storage wrote."""
FLOORS = ["core", "storage", "data", "training", "evaluation", "launching"]
"""The floors of ``benchmarks``' library, lowest first: each imports only the floors below it."""
ROOF = "roof"
"""The command-line modules directly in ``benchmarks/`` (``python -m benchmarks.<name>``): they may
import every floor, and they alone may import ``reports`` (to build the end-of-run report)."""


def layer(path: Path) -> tuple[str, int]:
    """(package, rank) of a project module: the rank orders the floors of ``benchmarks``
    (``FLOORS``, then the command-line roof above ``reports``); other packages rank by
    ``PACKAGES``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[0]
    if package != "benchmarks":
        return package, PACKAGES.index(package) * 100
    floor = parts[1] if len(parts) > 2 else ROOF if parts[1] != "__init__" else "core"
    rank = 1000 if floor == ROOF else 200 + FLOORS.index(floor) if floor in FLOORS else None
    assert rank is not None, f"{path}: benchmarks/{floor} is not one of the floors {FLOORS}"
    return f"benchmarks.{floor}", rank


def module_layer(name: str) -> tuple[str, int] | None:
    """The layer of an imported module name (``benchmarks.data.latents``), None if not the project's."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    path = ROOT.joinpath(*parts)
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.exists() and len(parts) > 1:  # ``from benchmarks.core import logs`` names a module in a package
        return module_layer(".".join(parts[:-1]))
    return layer(path)


def project_imports(path: Path) -> set[str]:
    """Project modules that a module imports (anywhere in it, lazy imports included), as
    ``package.module`` names (``from a.b import c`` gives ``a.b.c`` when ``c`` is a module)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def library_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def upward_imports() -> list[str]:
    """Every import of a module by a module on a lower layer (``benchmarks``' floors and roof
    included); imports within one floor are level and allowed."""
    wrong = []
    for path in library_modules():
        here, rank = layer(path)
        for name in sorted(project_imports(path)):
            target = module_layer(name)
            if target is not None and target[1] > rank:
                wrong.append(f"{path.relative_to(ROOT)} ({here}) imports {name} ({target[0]})")
    return wrong


def test_packages_import_only_the_layers_below_them():
    assert not upward_imports()


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    """The check itself: a storage module importing the trainer is an upward import."""
    planted = ROOT / "benchmarks" / "storage" / "_planted_upward.py"
    planted.write_text("from benchmarks.training.trainer import Trainer\n")
    try:
        assert any("_planted_upward.py" in line for line in upward_imports())
    finally:
        planted.unlink()


TEST_NAME_MAX = 60
"""A test's name says the behaviour it checks, in a line a reader takes in at once."""


def test_test_names_are_at_most_60_characters():
    import ast

    long = [
        f"{path.relative_to(ROOT)}: {node.name}"
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and len(node.name) > TEST_NAME_MAX
    ]
    assert not long, long


def test_ci_runs_the_readme_test_command_verbatim():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = lines[lines.index(next(line for line in lines if "verbatim" in line)) + 1]
    assert "pytest" in command and "ruff check" in command
    assert command in (ROOT / "README.md").read_text()


def test_extending_guide_shows_every_example_in_full():
    """docs/extending.md shows each example plugin of ``examples/`` whole, exactly as the file the
    tests run (a method, a sampler, a data set, a tokenizer, a feature extractor, a metric)."""
    guide = (ROOT / "docs" / "extending.md").read_text()
    examples = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name != "__init__.py")
    assert len(examples) >= 6
    for path in examples:
        assert f"```python\n{path.read_text()}```" in guide, path.name
