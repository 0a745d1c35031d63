"""Parquet shards: the shard folder layout, atomic writes, schema-validated reads.

Every shard folder (a run's scored/ and pairs/, a stage CLI's --output) is laid out as the Hub
lays out a dataset, so any Parquet reader opens it as it is:

    FOLDER/data/shard-00000.parquet ...   the shards, and nothing else (data_dir, shard_path)
    FOLDER/manifest.json, README.md, *.png  sidecars, beside data/ (never read as Parquet)
    FOLDER/data/.shard-00001.parquet.PID.tmp  a shard being written (dot-prefixed: pyarrow,
                                          pandas and datasets skip it; see rsdpo/files.py)

Plain readers take the data folder (`pandas.read_parquet("OUT/pairs/data")`, pyarrow, DuckDB,
polars); `datasets.load_dataset("OUT/pairs")` takes the folder itself, and a run root's card
(hub_configs) names each folder as a configuration: `load_dataset("OUT", "pairs")`.

A shard is committed by rsdpo/storage.py's rule for its backend (a dot-prefixed temp file +
fsync + rename on a file system, one upload of the finished object on an object store), so a
reader (or a resumed job) never takes a half-written file as complete. Readers validate the schema
the producing stage owns and name the file and column when it does not match. Locations are
strings: a local path or a URI (s3://bucket/run/scored/data/shard-00000.parquet).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rsdpo import storage
from rsdpo.errors import InputError, MissingInput

DATA = "data"  # the shards' subfolder of a shard folder
SHARD_SUFFIX = ".parquet"
HIDDEN = (".", "_")  # name prefixes pyarrow's dataset discovery skips: temp files and the like


def data_dir(folder: str | Path) -> str:
    """The subfolder of a shard folder that holds its shards (and only them)."""
    return storage.join(folder, DATA)


def shard_name(index: int) -> str:
    """The name (file stem) of the index-th shard of a folder: shard-00000, shard-00001, ..."""
    return f"shard-{index:05d}"


def shard_path(folder: str | Path, name: str) -> str:
    """Where shard `name` of a shard folder lives: FOLDER/data/NAME.parquet."""
    return storage.join(data_dir(folder), f"{name}{SHARD_SUFFIX}")


def shard_stem(path: str | Path) -> str:
    """A shard file's name without folder and suffix (shard-00000): it keys the plan and the commit."""
    return storage.basename(path).removesuffix(SHARD_SUFFIX)


def sidecar_dir(source: str | Path) -> str:
    """The shard folder a source belongs to, where its manifest.json and card live: the folder
    itself, or for its data/ subfolder or one shard file, the folder above."""
    folder = storage.parent(source) if storage.is_file(source) else str(source).rstrip("/")
    if storage.basename(folder) == DATA and not storage.is_dir(storage.join(folder, DATA)):
        return storage.parent(folder)
    return folder


def hub_configs(folders: dict[str, str]) -> list[dict]:
    """The `configs:` list of a dataset card's YAML front matter (the Hub's and `datasets`' format):
    one configuration per shard folder, {configuration name: folder relative to the card, "." for
    the card's own folder}, whose train split is every shard under FOLDER/data/."""
    return [{"config_name": name,
             "data_files": [{"split": "train", "path": str(Path(rel) / DATA / f"*{SHARD_SUFFIX}")}]}
            for name, rel in folders.items()]


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


def write_shard(table: pa.Table, path: str | Path, schema: pa.Schema) -> str:
    """Validate against `schema` and commit atomically (rsdpo/storage.py)."""
    table = conform(table, schema, str(path))
    with storage.atomic_write(path) as f:
        pq.write_table(table, f, compression="zstd")
    return str(path)


def list_shards(source: str | Path) -> list[str]:
    """Complete shards of a shard folder (FOLDER/data/*.parquet), of its data/ subfolder or of any
    folder of Parquet files (what other tools write), or the one file given; local or under an
    object-store prefix. Temp files and other names pyarrow skips (dot or underscore first) are
    never listed."""
    if storage.is_file(source):
        return [str(source)]
    if not storage.is_dir(source):
        raise MissingInput(f"{source}: no such shard folder or file")
    folder = data_dir(source) if storage.is_dir(data_dir(source)) else source
    return storage.list_files(folder, (SHARD_SUFFIX,))


def shard_metadata(path: str | Path) -> dict[bytes, bytes]:
    """The key-value metadata of a shard's schema, from its footer (no data read)."""
    fs, inner = storage.filesystem(path)
    return pq.read_schema(inner, filesystem=fs).metadata or {}


def read_shard(path: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """One shard, checked against `schema` (or only the `columns` asked for)."""
    fs, inner = storage.filesystem(path)
    try:
        table = pq.read_table(inner, filesystem=fs, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardError(f"{path}: not a readable Parquet file ({e}); delete it and re-run the stage") from e
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return conform(table, schema, str(path))


def read_shards(source: str | Path, schema: pa.Schema) -> pa.Table:
    """All shards under `source` as one table with `schema` (empty table when there are none)."""
    tables = [read_shard(p, schema) for p in list_shards(source)]
    return pa.concat_tables(tables) if tables else schema.empty_table()
