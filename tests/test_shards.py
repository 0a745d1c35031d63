import pyarrow as pa
import pytest

from generation.schema import PROMPTS_SCHEMA
from rsdpo.shards import (
    ShardError,
    conform,
    data_dir,
    hub_configs,
    list_shards,
    read_shards,
    shard_name,
    shard_path,
    sidecar_dir,
    write_shard,
)


def _prompts(n):
    return pa.table({"prompt_id": [f"p{i}" for i in range(n)],
                     "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
                     "reference": [None] * n, "source": ["t"] * n}, schema=PROMPTS_SCHEMA)


def test_write_is_atomic_and_readers_skip_temp_files(tmp_path):
    write_shard(_prompts(3), tmp_path / "shard-00000.parquet", PROMPTS_SCHEMA)
    (tmp_path / ".shard-00001.parquet.123.tmp").write_bytes(b"partial")
    (tmp_path / "_SUCCESS.parquet").write_bytes(b"")  # a name pyarrow skips is never a shard either
    assert list_shards(tmp_path) == [str(tmp_path / "shard-00000.parquet")]
    assert read_shards(tmp_path, PROMPTS_SCHEMA).num_rows == 3


def test_a_shard_folder_keeps_shards_under_data_and_sidecars_beside_it(tmp_path):
    folder = tmp_path / "pairs"
    path = write_shard(_prompts(3), shard_path(folder, shard_name(7)), PROMPTS_SCHEMA)
    assert path == str(folder / "data" / "shard-00007.parquet") and data_dir(folder) == str(folder / "data")
    (folder / "manifest.json").write_text("{}")
    (folder / "README.md").write_text("# card")
    # the folder, its data/ subfolder and one shard name the same shards and the same sidecar folder
    for source in (folder, data_dir(folder), path):
        assert list_shards(source) == [path] and sidecar_dir(source) == str(folder)
    assert read_shards(folder, PROMPTS_SCHEMA).num_rows == 3


def test_hub_configs_name_each_folder_by_a_relative_data_glob():
    assert hub_configs({"pairs": "pairs", "default": "."}) == [
        {"config_name": "pairs", "data_files": [{"split": "train", "path": "pairs/data/*.parquet"}]},
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]},
    ]


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
