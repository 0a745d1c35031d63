"""The quarantine file of a run or stage folder: prompt rows rejected at load time, one JSON object
a line ({source, line, field, reason, raw}, from generation.prompts.load_prompts), beside the shards
(a local folder or an object-store prefix, rsdpo/storage.py).

Written by `python -m generation` and by the cluster pipeline, read by `rsdpo inspect`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rsdpo import storage

QUARANTINE = "quarantine.jsonl"


def write_quarantine(out_dir: str | Path, rejects: list[dict[str, Any]]) -> str | None:
    """Write OUT/quarantine.jsonl atomically when there are rejects; none leaves the folder as it is."""
    if not rejects:
        return None
    return storage.write_text(storage.join(out_dir, QUARANTINE), "".join(json.dumps(r) + "\n" for r in rejects))


def read_quarantine(out_dir: str | Path) -> list[dict[str, Any]]:
    path = storage.join(out_dir, QUARANTINE)
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
