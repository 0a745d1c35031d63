"""Reading pairs shards (local paths and URIs, one code path), shuffling."""

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairing.schema import PAIRS_SCHEMA
from rsdpo.shards import ShardError
from training.data import pair_counts, read_pairs, shuffle


def test_reads_every_shard_and_validates(pairs_dir):
    table, digest = read_pairs(str(pairs_dir))
    assert table.schema.equals(PAIRS_SCHEMA) and table.num_rows == 48
    counts = pair_counts(table)
    assert counts["pairs"] == 48 and counts["prompts"] == 24
    assert counts["by_strategy"] == {"rs-dpo": 32, "best-worst": 16}
    one, one_digest = read_pairs(str(pairs_dir / "data" / "part-00000.parquet"))
    assert one.num_rows == 32 and one_digest != digest


def test_uris_take_the_same_path(pairs_dir):
    local, digest = read_pairs(str(pairs_dir))
    via_file_uri, d1 = read_pairs(pairs_dir.as_uri())  # pyarrow's own filesystem
    mem = fsspec.filesystem("memory")                  # a scheme only fsspec knows (like az://, gcs via gcsfs)
    for p in sorted(pairs_dir.rglob("*")):
        if p.is_file():
            mem.pipe(f"/training-pairs/{p.relative_to(pairs_dir)}", p.read_bytes())
    via_fsspec, d2 = read_pairs("memory://training-pairs")
    assert local.equals(via_file_uri) and local.equals(via_fsspec)
    assert digest == d1 == d2


def test_temp_files_are_ignored_and_bad_shards_named(tmp_path, pairs_dir):
    (tmp_path / "part-00000.parquet").write_bytes((pairs_dir / "data" / "part-00000.parquet").read_bytes())
    (tmp_path / ".part-00001.parquet.123.tmp").write_bytes(b"half a file")
    (tmp_path / ".part-00003.parquet").write_bytes(b"hidden")  # dot-prefixed: skipped, as pyarrow does
    assert read_pairs(str(tmp_path))[0].num_rows == 32
    pq.write_table(pa.table({"prompt_id": ["a"]}), tmp_path / "part-00002.parquet")
    with pytest.raises(ShardError, match=r"part-00002.parquet: missing column"):
        read_pairs(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*.parquet"):
        read_pairs(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such pairs"):
        read_pairs(str(tmp_path / "missing"))


def test_shuffle_is_a_seeded_permutation(pairs_dir):
    table, _ = read_pairs(str(pairs_dir))
    a, b, c = shuffle(table, 0), shuffle(table, 0), shuffle(table, 1)
    assert a.equals(b) and not a.equals(c)
    assert sorted(a["prompt_id"].to_pylist()) == sorted(table["prompt_id"].to_pylist())
    assert not np.array_equal(a["prompt_id"].to_pylist(), table["prompt_id"].to_pylist())
