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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from common.errors import MissingInput
from common.files import atomic_path
from common.shards import DATA, HIDDEN, SHARD_SUFFIX, ShardError, conform
from pairing.schema import CHOSEN_REWARD, PAIRS_SCHEMA, PROMPT_ID, REJECTED_REWARD, STRATEGY


def filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; pyarrow's own filesystems first, else fsspec's."""
    if "://" not in source:
        return pafs.LocalFileSystem(), str(Path(source).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(source)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Schemes pyarrow does not know (memory://, az:// via adlfs, ...): wrap the fsspec filesystem.
        import fsspec

        fs, path = fsspec.core.url_to_fs(source)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_pairs(source: str) -> tuple[pa.Table, str]:
    """All complete pairs shards under `source` (a folder or one file), validated against PAIRS_SCHEMA.

    Returns the table and a sha256 of the shard bytes (it names the cached Arrow copy, so a changed
    input never reuses a stale tokenized or reference log-prob cache).
    """
    fs, path = filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise MissingInput(f"{source}: no such pairs shard folder or file")
    if info.type == pafs.FileType.File:
        files = [path]
    else:
        if fs.get_file_info(f"{path}/{DATA}").type == pafs.FileType.Directory:
            path = f"{path}/{DATA}"  # a shard folder: its shards lie under data/ (common/shards.py)
        files = sorted(
            f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=False))
            if f.type == pafs.FileType.File and f.path.endswith(SHARD_SUFFIX) and not f.base_name.startswith(HIDDEN)
        )
    if not files:
        raise MissingInput(f"{source}: no *.parquet pairs shards (run the pairing stage first)")
    digest = hashlib.sha256()
    tables = []
    for f in files:
        with fs.open_input_file(f) as fh:
            data = fh.read()
        digest.update(f.rsplit("/", 1)[-1].encode())
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
