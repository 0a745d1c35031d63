"""The bench suite's plumbing (no benchmark is timed here): target checks, the Markdown table,
and how bench/run_all.py reads each script's JSON record."""

import json

from bench.report import markdown, metric
from bench.run_all import first_json, rows_for


def test_metric_checks_its_target():
    assert metric("b", "ratio", 1.6, ">= 1.5")["met"] is True
    assert metric("b", "ratio", 1.4, ">= 1.5")["met"] is False
    assert metric("b", "wall", 1.1, "<= 1.25")["met"] is True
    assert metric("b", "pairs/s", 2_000_000, ">= 1e6")["met"] is True
    assert metric("b", "wall(100k) / wall(10k)", 9.4, "9..11")["met"] is True
    assert metric("b", "wall(100k) / wall(10k)", 5.6, "9..11")["met"] is False
    assert metric("b", "info", 3.0)["met"] is None
    assert metric("b", "failed", "timed out", ">= 1.5")["met"] is None  # no number, no verdict


def test_markdown_has_one_row_per_metric():
    rows = [metric("scorer", "x / naive", 2.04, ">= 1.5"), metric("e2e", "tok/s", 123.4)]
    lines = markdown(rows).splitlines()
    assert lines[0] == "| bench | metric | value | target | met? |"
    assert len(lines) == 2 + len(rows)
    assert "| scorer | x / naive | 2.04 | >= 1.5 | yes |" in lines


def test_first_json_reads_one_line_and_indented_records():
    one = {"bench": "scorer", "metrics": []}
    assert first_json("log line\n" + json.dumps(one) + "\n\n| table |\n") == one
    indented = {"ratio_train_tokens_per_s": 1.7, "variants": {"a": {"s": 1}}}
    assert first_json("{not json\n" + json.dumps(indented, indent=2) + "\n\n| t |\n") == indented
    assert first_json("no record here\n") is None


def test_rows_for_scripts_without_a_metrics_list():
    pairing = rows_for("pairing", {"batched_pairs_per_s": 3e7, "speedup": 120.0})
    assert pairing[0]["met"] is True and pairing[1]["value"] == 120.0
    dpo = rows_for("dpo", {"ratio_train_tokens_per_s": 1.7, "setup": {"pairs": 256}, "loss_abs_diff": 0.0})
    assert [r["metric"] for r in dpo] == ["ratio_train_tokens_per_s"]
