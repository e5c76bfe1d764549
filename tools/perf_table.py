"""Render performance tables (markdown) from benchmark results.

    python -m tools.perf_table results/bench/bench.json [results/bench/s2_b32.jsonl ...]

Inputs: pytest-benchmark JSON (``--benchmark-json``, written by ``tests/perf/test_bench.py``)
and JSON-lines from ``python -m tools.profile_step``. Prints one table per group
(median seconds, throughput, peak live-tensor memory, FLOPs per step, achieved FLOP/s, MFU where
the matmul peak was recorded) and, for every training group with a ``cfm`` entry, each method's
peak memory and achieved FLOP/s relative to ``cfm``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

UNITS = {"steps": "steps/s", "samples": "samples/s", "images": "images/s"}


def rows_from_file(path: Path) -> list[dict]:
    """Normalised rows: group, name, seconds, unit, items and the training extras when present."""
    if path.suffix == ".jsonl":
        rows = []
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                group = f"train-{r['workload']}-b{r['batch']}"
                if r.get("interleaved_with"):  # one table per interleaved run: its ratios are paired
                    group += f" ({', '.join(sorted([r['label'], *r['interleaved_with']]))} interleaved)"
                rows.append(
                    {
                        **r,
                        "group": group,
                        "name": r["label"],
                        "seconds": r["seconds_per_step"],
                        "unit": "steps",
                        "items": 1,
                    }
                )
        return rows
    data = json.loads(path.read_text())
    return [
        {
            **b["extra_info"],
            "group": b["group"],
            "seconds": b["stats"]["median"],
            "name": b["extra_info"].get("label", b["name"].removeprefix("test_")),
        }
        for b in data["benchmarks"]
    ]


def fmt(value, digits: int = 3) -> str:
    """Three significant digits; thousands without an exponent."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


def group_table(rows: list[dict]) -> list[str]:
    train = any("peak_tensor_mib" in r for r in rows)
    unit = UNITS[rows[0]["unit"]]
    head = ["benchmark", "median s", unit]
    if train:
        head += ["batch", "peak tensor MiB", "GFLOP/step", "achieved GFLOP/s", "MFU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], fmt(r["seconds"]), fmt(r["items"] / r["seconds"])]
        if train:
            cells += [
                fmt(r.get("batch")),
                f"{r['peak_tensor_mib']:.0f}",
                f"{r['flops_per_step'] / 1e9:.1f}",
                f"{r['flops_per_step'] / r['seconds'] / 1e9:.1f}",
                f"{r['flops_per_step'] / r['seconds'] / r['peak_flops']:.2f}" if r.get("peak_flops") else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratio_table(rows: list[dict]) -> list[str]:
    """Peak memory and achieved FLOP/s of every entry relative to the group's ``cfm``."""
    ref = next((r for r in rows if r.get("method") == "cfm"), None)
    if ref is None or "peak_tensor_mib" not in ref:
        return []
    lines = ["| benchmark | peak memory / cfm | achieved FLOP/s / cfm | step time / cfm |", "|---|---|---|---|"]
    ref_rate = ref["flops_per_step"] / ref["seconds"]
    for r in rows:
        rate = r["flops_per_step"] / r["seconds"]
        lines.append(
            f"| {r['name']} | {r['peak_tensor_mib'] / ref['peak_tensor_mib']:.2f} | "
            f"{rate / ref_rate:.2f} | {r['seconds'] / ref['seconds']:.2f} |"
        )
    return lines


def render(paths: list[Path]) -> str:
    rows = [r for p in paths for r in rows_from_file(p)]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, members in groups.items():
        out += [f"### {name}", "", *group_table(members), ""]
        ratios = ratio_table(members)
        if ratios:
            out += [*ratios, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="pytest-benchmark .json or profile_step .jsonl files")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no such results file: {', '.join(missing)}")
    print(render(args.paths))


if __name__ == "__main__":
    main()
