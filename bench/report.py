"""Shared output format of the bench scripts: one JSON line, then a Markdown table of metrics.

Every bench record carries `metrics`: a list of {bench, metric, value, target, met}, where target
is a human-readable condition (">= 1.5") or null and met is true/false/null (no target).
bench/run_all.py collects these rows from each script's JSON line into bench/results/latest.*.
"""

from __future__ import annotations

import json
import operator
import sys

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def metric(bench: str, name: str, value, target: str | None = None) -> dict:
    """One table row; `target` is "<op> <number>" (e.g. ">= 1.5") or a closed range "<low>..<high>"
    (e.g. "9..11"), checked here against value."""
    met = None
    if target is not None and isinstance(value, int | float):
        if ".." in target:
            low, _, high = target.partition("..")
            met = float(low) <= value <= float(high)
        else:
            op, _, bound = target.partition(" ")
            met = bool(_OPS[op](value, float(bound)))
    return {"bench": bench, "metric": name, "value": value, "target": target, "met": met}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "" if value is None else str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| bench | metric | value | target | met? |", "|---|---|---:|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(f"| {r['bench']} | {r['metric']} | {_fmt(r['value'])} | {r.get('target') or ''} | {met} |")
    return "\n".join(lines)


def emit(record: dict, notes: list[str] = ()) -> None:
    """Print the record as one JSON line (what run_all parses), then the Markdown table and notes."""
    print(json.dumps(record, default=str), flush=True)
    print()
    print(markdown(record.get("metrics", [])))
    for n in notes:
        print(n)
    sys.stdout.flush()
