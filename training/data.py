"""The training stage's input: pairs shards read (local or any URI, one code path), validated,
shuffled, counted, and cached as one Arrow file that TRL's datasets map.

    python -m training --input PAIRS --output MODEL     # PAIRS: a folder or file, local or s3://, gs://, ...
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pairing.schema import CHOSEN_REWARD, PAIRS_SCHEMA, PROMPT_ID, REJECTED_REWARD, STRATEGY
from rsdpo import storage
from rsdpo.errors import MissingInput
from rsdpo.files import atomic_path
from rsdpo.shards import ShardError, conform, list_shards


def read_pairs(source: str) -> tuple[pa.Table, str]:
    """All complete pairs shards under `source` (a shard folder, its data/, or one file; local or a URI:
    rsdpo/storage.py), validated against PAIRS_SCHEMA.

    Returns the table and a sha256 of the shard bytes (it names the cached Arrow copy, so a changed
    input never reuses a stale tokenized or reference log-prob cache).
    """
    if not storage.exists(source):
        raise MissingInput(f"{source}: no such pairs shard folder or file")
    files = list_shards(source)
    if not files:
        raise MissingInput(f"{source}: no *.parquet pairs shards (run the pairing stage first)")
    digest = hashlib.sha256()
    tables = []
    for f in files:
        data = storage.read_bytes(f)
        digest.update(storage.basename(f).encode())
        digest.update(data)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except pa.ArrowInvalid as e:
            raise ShardError(f"{f}: not a readable Parquet file ({e}); delete it and re-run pairing") from e
        tables.append(conform(table, PAIRS_SCHEMA, f))
    return pa.concat_tables(tables), digest.hexdigest()


def shuffle(table: pa.Table, seed: int) -> pa.Table:
    # TRL reads the dataset in order within an epoch unless the Trainer's sampler shuffles; shuffling
    # here makes the order independent of how pairing sharded its output.
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


def pair_counts(table: pa.Table) -> dict[str, Any]:
    gaps = np.asarray(table[CHOSEN_REWARD]) - np.asarray(table[REJECTED_REWARD])  # (n_pairs,) raw reward gaps
    return {
        "pairs": table.num_rows,
        "prompts": len(set(table[PROMPT_ID].to_pylist())),
        "by_strategy": dict(Counter(table[STRATEGY].to_pylist())),
        "reward_gap_mean": float(gaps.mean()) if len(gaps) else None,
    }


def cache_pairs(table: pa.Table, digest: str, cache: Path, seed: int) -> Path:
    """Write the shuffled pairs once as an Arrow stream file that `datasets.Dataset.from_file` maps.

    A file-backed dataset gives TRL a stable cache folder: its reference log-prob cache lands next to
    it, named by content, so every rank reads the same file and a resumed run skips the precompute.
    """
    path = cache / f"pairs-{digest[:16]}-seed{seed}.arrow"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path
