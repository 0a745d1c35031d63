import pyarrow as pa
import pytest

from common.shards import ShardError, conform, list_shards, read_shards, write_shard
from generation.schema import PROMPTS_SCHEMA


def _prompts(n):
    return pa.table({"prompt_id": [f"p{i}" for i in range(n)],
                     "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
                     "reference": [None] * n, "source": ["t"] * n}, schema=PROMPTS_SCHEMA)


def test_write_is_atomic_and_readers_skip_temp_files(tmp_path):
    write_shard(_prompts(3), tmp_path / "shard-00000.parquet", PROMPTS_SCHEMA)
    (tmp_path / "shard-00001.parquet.123.tmp").write_bytes(b"partial")
    assert [p.name for p in list_shards(tmp_path)] == ["shard-00000.parquet"]
    assert read_shards(tmp_path, PROMPTS_SCHEMA).num_rows == 3


def test_a_write_interrupted_midway_leaves_no_temp_file(tmp_path, monkeypatch):
    """A writer cancelled mid-file (Ray cancels tasks with KeyboardInterrupt) removes its temp file."""
    import pyarrow.parquet as pq

    real = pq.write_table

    def write_then_interrupt(table, where, **kwargs):
        real(table.slice(0, 1), where, **kwargs)  # part of the file is on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_shard(_prompts(3), tmp_path / "shard-00000.parquet", PROMPTS_SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_conform_names_file_and_column():
    bad = _prompts(2).drop_columns(["source"])
    with pytest.raises(ShardError, match=r"f\.parquet: missing column\(s\) \['source'\]"):
        conform(bad, PROMPTS_SCHEMA, "f.parquet")
    wrong = _prompts(2).set_column(0, "prompt_id", pa.array([[1], [2]]))
    with pytest.raises(ShardError, match="column 'prompt_id' has type"):
        conform(wrong, PROMPTS_SCHEMA, "f.parquet")


def test_unreadable_shard_is_named(tmp_path):
    (tmp_path / "shard-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(ShardError, match="shard-00000.parquet: not a readable Parquet file"):
        read_shards(tmp_path, PROMPTS_SCHEMA)
