"""The quarantine file of a run or stage folder: prompt rows rejected at load time, one JSON object
a line ({source, line, field, reason, raw}, from generation.prompts.load_prompts), beside the shards.

Written by `python -m generation` and by the cluster pipeline, read by `rsdpo inspect`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.files import atomic_path

QUARANTINE = "quarantine.jsonl"


def write_quarantine(out_dir: str | Path, rejects: list[dict[str, Any]]) -> Path | None:
    """Write OUT/quarantine.jsonl atomically when there are rejects; none leaves the folder as it is."""
    if not rejects:
        return None
    path = Path(out_dir) / QUARANTINE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rejects))
    return path


def read_quarantine(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / QUARANTINE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
