"""The storage layer (rsdpo/storage.py) on a local file system and on a real S3-compatible server
(rclone serve s3, tests/s3server.py): commit rules, listing, reading, deleting."""

import os
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from generation.schema import PROMPTS_SCHEMA
from rsdpo import storage
from rsdpo.shards import list_shards, read_shard, write_shard


def _prompts(n):
    return pa.table({"prompt_id": [f"p{i}" for i in range(n)],
                     "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
                     "reference": [None] * n, "source": ["t"] * n}, schema=PROMPTS_SCHEMA)


# ------------------------------------------------------------------------------------ local file system


def test_a_local_commit_fsyncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "run" / "plan.json"
    storage.write_text(target, "{}")
    (_, synced_tmp), (_, tmp, dst), (_, synced_dir) = events
    assert synced_tmp == tmp and tmp.endswith(".tmp") and dst == str(target)  # data on disk, then rename
    assert synced_dir == str(target.parent)                                    # the rename on disk too
    assert target.read_text() == "{}" and os.listdir(target.parent) == ["plan.json"]


def test_a_failed_local_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    storage.write_text(target, "old")
    with pytest.raises(ValueError), storage.atomic_write(target) as f:
        f.write(b"half")
        raise ValueError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_listing_skips_temp_and_hidden_files_and_globs_cross_folders(tmp_path):
    for name in ("a/x.jsonl", "a/b/y.jsonl", "a/z.parquet", "a/_meta.jsonl", "a/.hidden.jsonl",
                 "a/w.jsonl.123-abcd.tmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    base = str(tmp_path / "a")
    assert storage.list_files(base) == [f"{base}/x.jsonl", f"{base}/z.parquet"]
    assert storage.list_files(base, (".jsonl",), recursive=True) == [f"{base}/b/y.jsonl", f"{base}/x.jsonl"]
    assert storage.glob(f"{base}/*.jsonl") == [f"{base}/b/y.jsonl", f"{base}/x.jsonl"]
    assert storage.list_files(tmp_path / "missing") == []


def test_uri_paths_keep_their_scheme():
    assert storage.join("s3://b/run/", "scored", "shard-00000.parquet") == "s3://b/run/scored/shard-00000.parquet"
    assert storage.parent("s3://b/run/plan.json") == "s3://b/run"
    assert storage.basename("gs://b/run/scored/") == "scored"
    assert storage.join("out", "scored") == "out/scored"


def test_storage_keys_never_show_in_a_dumped_config():
    cfg = storage.StorageConfig(endpoint_url="http://s3.local:9000", access_key_id="AKIDSECRETLOOKING",
                                secret_access_key="very-secret-value")
    dumped = str(cfg.model_dump(mode="json")) + cfg.model_dump_json() + repr(cfg)
    assert "AKIDSECRETLOOKING" not in dumped and "very-secret-value" not in dumped
    with pytest.raises(ValueError, match="go together"):
        storage.StorageConfig(access_key_id="only-one")


# -------------------------------------------------------------------------- a real S3-compatible server


def test_an_object_appears_whole_only_when_its_upload_completes(s3_bucket):
    key = f"{s3_bucket}/run/scored/shard-00000.parquet"
    with storage.atomic_write(key) as f:
        f.write(b"PAR1" + b"x" * 1000)
        assert not storage.exists(key)         # nothing under the final name while it is written
    assert storage.read_bytes(key) == b"PAR1" + b"x" * 1000
    with pytest.raises(RuntimeError), storage.atomic_write(f"{s3_bucket}/run/plan.json") as f:
        f.write(b"{half")
        raise RuntimeError("killed mid-write")
    assert not storage.exists(f"{s3_bucket}/run/plan.json")   # a failed write uploads nothing
    big = os.urandom(12 << 20)                                # past one upload part: multipart
    storage.write_bytes(f"{s3_bucket}/run/big.bin", big)
    assert storage.read_bytes(f"{s3_bucket}/run/big.bin") == big


@pytest.fixture
def own_bucket(tmp_path, monkeypatch):
    """A bucket on a server of this test's own. rclone's server stores the folder marker pyarrow
    writes after a delete ("run/") as a file and retries it for seconds; on the shared server that
    stalled the next tests' requests past the SDK's 3 s timeout."""
    from s3server import start_s3_server

    server = start_s3_server(tmp_path / "s3")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    storage.configure(None)
    yield server.make_bucket("deletes")
    server.stop()


def test_list_read_exists_and_delete_a_prefix(own_bucket):
    s3_bucket = own_bucket
    for name in ("run/scored/shard-00000.parquet", "run/scored/shard-00001.parquet", "run/pairs/shard-00000.parquet",
                 "run/plan.json", "run/prompts/more/p.jsonl"):
        storage.write_text(f"{s3_bucket}/{name}", name)
    run = f"{s3_bucket}/run"
    assert storage.list_files(f"{run}/scored", (".parquet",)) == [
        f"{run}/scored/shard-00000.parquet", f"{run}/scored/shard-00001.parquet"]
    assert storage.list_files(run) == [f"{run}/plan.json"]
    assert storage.glob(f"{run}/prompts/*.jsonl") == [f"{run}/prompts/more/p.jsonl"]
    assert storage.read_text(f"{run}/plan.json") == "run/plan.json"
    assert storage.is_dir(f"{run}/scored") and storage.is_file(f"{run}/plan.json")
    assert not storage.exists(f"{run}/nothing") and storage.list_files(f"{run}/nothing") == []
    storage.delete_tree(f"{run}/scored")
    assert storage.list_files(f"{run}/scored") == []
    # rclone refuses pyarrow's marker for "run/" and then answers from a folder cache without "run"
    # until it expires (DIR_CACHE_TIME, measured 0.11 s at 100ms); AWS S3 and MinIO take the marker.
    deadline = time.monotonic() + 2.0
    while not storage.exists(f"{run}/pairs/shard-00000.parquet"):
        assert time.monotonic() < deadline, "the prefix's other objects were deleted too"
        time.sleep(0.02)
    storage.write_text(f"{run}/scored/shard-00000.parquet", "again")   # the prefix takes new objects
    assert storage.list_files(f"{run}/scored") == [f"{run}/scored/shard-00000.parquet"]


def test_shards_round_trip_through_the_object_store(s3_bucket):
    where = f"{s3_bucket}/run/scored"
    write_shard(_prompts(3), f"{where}/shard-00000.parquet", PROMPTS_SCHEMA)
    write_shard(_prompts(2), f"{where}/shard-00001.parquet", PROMPTS_SCHEMA)
    assert list_shards(where) == [f"{where}/shard-00000.parquet", f"{where}/shard-00001.parquet"]
    assert read_shard(f"{where}/shard-00001.parquet", PROMPTS_SCHEMA).num_rows == 2
    with pytest.raises(FileNotFoundError, match="no such shard folder"):
        list_shards(f"{s3_bucket}/elsewhere")


def test_a_storage_section_is_handed_to_the_file_system(s3_server, s3_bucket, monkeypatch):
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    storage.configure(storage.StorageConfig(endpoint_url=s3_server.endpoint, region="us-east-1",
                                            access_key_id=s3_server.access_key,
                                            secret_access_key=s3_server.secret_key))
    try:
        storage.write_text(f"{s3_bucket}/from-config.txt", "ok")
        assert storage.read_text(f"{s3_bucket}/from-config.txt") == "ok"
        storage.configure(storage.StorageConfig(endpoint_url=s3_server.endpoint, region="us-east-1",
                                                access_key_id=s3_server.access_key, secret_access_key="wrong"))
        with pytest.raises(OSError, match="ACCESS_DENIED"):
            storage.read_text(f"{s3_bucket}/from-config.txt")
    finally:
        storage.configure(None)
    fs, path = storage.filesystem(f"{s3_bucket}/from-config.txt")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_bucket.removeprefix('s3://')}/from-config.txt"


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def test_the_tests_s3_server_sits_idle_after_serving_many_folders(tmp_path, monkeypatch):
    """With --dir-cache-time 0s, rclone 1.75's server re-armed every folder's cache-cleanup timer
    with no delay: once it had served some folders it spun at a full core, idle, and later requests
    stalled for 60 s (CI of 737df1e). The flag it runs with now leaves it idle between requests."""
    from s3server import start_s3_server

    server = start_s3_server(tmp_path / "s3")
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        storage.configure(None)
        bucket = server.make_bucket("busy")
        for i in range(20):
            storage.write_text(f"{bucket}/run{i}/scored/manifest.json", "{}")
            assert storage.list_files(f"{bucket}/run{i}", recursive=True)
        time.sleep(1.0)
        before = _cpu_seconds(server.proc.pid)
        time.sleep(3.0)
        used = _cpu_seconds(server.proc.pid) - before
        assert used < 0.6, f"rclone used {used:.2f} s of CPU in 3 s with no request (a spinning server)"
    finally:
        server.stop()
        storage.configure(None)
