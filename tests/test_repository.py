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
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
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
    hits = [f"{path.relative_to(ROOT)}: {needle}" for path in tracked_text_files()
            for needle in OUTSIDE if needle in path.read_text()]
    assert not hits, hits


def test_markdown_links_resolve():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
    assert "docs/methods.md" in (ROOT / "README.md").read_text()


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


LAYERS = {"backbones": set(), "methods": {"backbones"}, "benchmarks": {"backbones", "methods", "reports"},
          "reports": {"benchmarks", "methods"}}
"""Which of the project's packages each package may import: networks know nothing of methods or of
the pipeline; methods know only the networks (the plugin contract)."""


def project_imports(path: Path) -> set[str]:
    """Top-level project packages that a module imports (anywhere in it, lazy imports included)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {name.split(".")[0] for name in names} & set(LAYERS)
    return found


def test_packages_import_only_the_layers_below_them():
    wrong = [f"{path.relative_to(ROOT)} imports {sorted(bad)}"
             for package, allowed in LAYERS.items() for path in sorted((ROOT / package).rglob("*.py"))
             if (bad := project_imports(path) - allowed - {package})]
    assert not wrong, wrong
