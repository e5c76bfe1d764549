"""The check the committed-report tests share: a freshly built report equals the committed one."""

from __future__ import annotations

from pathlib import Path


def assert_same_report(built: Path, committed: Path) -> None:
    """``built`` and ``committed`` report folders agree byte for byte: report.md and every figure's
    data CSV (the PNG and PDF renderings vary with the plotting libraries' versions)."""
    assert (built / "report.md").read_bytes() == (committed / "report.md").read_bytes()
    csvs = sorted(p.name for p in (committed / "figures").glob("*.csv"))
    assert csvs and csvs == sorted(p.name for p in (built / "figures").glob("*.csv"))
    for csv in csvs:
        assert (built / "figures" / csv).read_bytes() == (committed / "figures" / csv).read_bytes(), csv
