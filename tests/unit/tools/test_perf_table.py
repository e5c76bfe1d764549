"""The README table renderer reads pytest-benchmark JSON and profile_step JSON-lines alike
(fast; part of the default run)."""

from __future__ import annotations

import json

from tools.perf_table import render


def entry(label, median, peak, flops):
    return {
        "group": "train-x",
        "name": f"test_train[{label}]",
        "stats": {"median": median},
        "extra_info": {
            "unit": "steps",
            "items": 1,
            "label": label,
            "method": label.split("-")[0],
            "batch": 8,
            "peak_tensor_mib": peak,
            "flops_per_step": flops,
        },
    }


def test_renders_throughput_memory_and_ratios_to_cfm(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "benchmarks": [
                    entry("cfm", 2.0, 100.0, 4e9),
                    entry("purr-fused", 4.0, 125.0, 10e9),
                    {
                        "group": "tokenizer",
                        "name": "test_tokenizer[encode]",
                        "stats": {"median": 0.5},
                        "extra_info": {"unit": "images", "items": 256},
                    },
                ]
            }
        )
    )
    lines = tmp_path / "profile.jsonl"
    lines.write_text(
        json.dumps(
            {
                "label": "purr-dense",
                "method": "purr",
                "workload": "S2",
                "batch": 32,
                "seconds_per_step": 10.0,
                "peak_tensor_mib": 4000.0,
                "flops_per_step": 2e12,
                "peak_flops": 4e11,
            }
        )
        + "\n"
    )
    text = render([bench, lines])
    assert "| purr-fused | 4 | 0.25 | 8 | 125 | 10.0 | 2.5 |" in text  # 10 GFLOP / 4 s
    assert "| purr-fused | 1.25 | 1.25 | 2.00 |" in text  # memory, FLOP/s and time relative to cfm
    assert "| tokenizer[encode] | 0.5 | 512 |" in text  # images/s
    assert "### train-S2-b32" in text and "| purr-dense | 10 | 0.1 | 32 | 4000 | 2000.0 | 200.0 | 0.50 |" in text
    assert "| purr-fused | 4 | 0.25 | 8 | 125 | 10.0 | 2.5 |  |" in text  # no peak recorded: no MFU
