"""Parquet shards: atomic writes, schema-validated reads.

A shard is written to a temporary name in the same folder and renamed into place, so a reader
(or a resumed job) never takes a half-written file as complete. Readers validate the schema the
producing stage owns and name the file and column when it does not match.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import InputError, MissingInput
from common.files import atomic_path


class ShardError(InputError):
    """A shard does not match the contract; the message names the file and what to do."""


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Return `table` with exactly `schema`'s columns, order and types, or raise naming the gap."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ShardError(
            f"{where}: missing column(s) {missing}; expected the schema {schema.names}. "
            f"Was this written by a different stage or version?"
        )
    cols = []
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ShardError(
                    f"{where}: column {field.name!r} has type {col.type}, expected {field.type} ({e})"
                ) from e
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def write_shard(table: pa.Table, path: str | Path, schema: pa.Schema) -> Path:
    """Validate against `schema` and write atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = conform(table, schema, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def list_shards(source: str | Path) -> list[Path]:
    """Complete Parquet shards under a folder (temp files ignored), or the one file given."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise MissingInput(f"{source}: no such shard folder or file")
    return sorted(p for p in source.glob("*.parquet") if p.is_file())


def shard_metadata(path: str | Path) -> dict[bytes, bytes]:
    """The key-value metadata of a shard's schema, from its footer (no data read)."""
    return pq.read_schema(path).metadata or {}


def read_shard(path: str | Path, schema: pa.Schema) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardError(f"{path}: not a readable Parquet file ({e}); delete it and re-run the stage") from e
    return conform(table, schema, str(path))


def read_shards(source: str | Path, schema: pa.Schema) -> pa.Table:
    """All shards under `source` as one table with `schema` (empty table when there are none)."""
    tables = [read_shard(p, schema) for p in list_shards(source)]
    return pa.concat_tables(tables) if tables else schema.empty_table()
