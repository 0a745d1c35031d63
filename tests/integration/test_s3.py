"""Integration tier, object storage: the data job reads a prompt prefix from and writes its run folder
to a real S3-compatible server (rclone serve s3, tests/s3server.py), with credentials from the run
config's `storage:` section; the driver is SIGKILLed mid-run and the same command resumes it."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_faults import ROOT, _config, _kill_group_leftovers

from generation.schema import PROMPT_ID
from rewarding.schema import SCORED_SCHEMA
from rsdpo import storage
from rsdpo.shards import read_shard
from rsdpo.storage import StorageConfig

pytestmark = pytest.mark.integration
JSONL = {"a.jsonl": range(0, 4), "b.jsonl": range(4, 7), "more/c.jsonl": range(7, 9)}
PARQUET = range(9, 12)
N_PROMPTS = 12


def _upload_prompts(prefix: str) -> None:
    """Three JSONL objects (b.jsonl's line 2 is broken) and one Parquet object: one prompt set."""
    for name, ids in JSONL.items():
        lines = [json.dumps({"prompt": f"Tell me fact {i} about the sea.", "prompt_id": f"s{i:02d}"}) for i in ids]
        if name == "b.jsonl":
            lines.insert(1, '{"prompt": "half a line')
        storage.write_text(f"{prefix}/{name}", "\n".join(lines) + "\n")
    with storage.atomic_write(f"{prefix}/d.parquet") as f:
        pq.write_table(pa.table({"prompt": [f"Tell me fact {i} about the sea." for i in PARQUET],
                                 "prompt_id": [f"s{i:02d}" for i in PARQUET]}), f)


def _keys(fs: pafs.FileSystem, bucket: str) -> list[str]:
    """Every object in the bucket, as the S3 API lists it (hidden names included)."""
    infos = fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def _ids(out: str) -> list[str]:
    return [pid for p in storage.glob(f"{out}/scored/*.parquet")
            for pid in read_shard(p, SCORED_SCHEMA, columns=[PROMPT_ID])[PROMPT_ID].to_pylist()]


@pytest.fixture(scope="module")
def s3_run(s3_server, tiny_policy, tmp_path_factory):
    """One run killed after its first commit, then the same command to the end; what both left."""
    tmp = tmp_path_factory.mktemp("s3run")
    bucket = s3_server.make_bucket("rsdpo-runs")
    creds = {"endpoint_url": s3_server.endpoint, "region": "us-east-1",
             "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}
    storage.configure(StorageConfig(**creds))   # this test process reads the bucket too
    _upload_prompts(f"{bucket}/prompts")
    out = f"{bucket}/run1"
    config, _ = _config(tmp, tiny_policy, output_dir=out, prompts={"source": f"{bucket}/prompts/"},
                        storage=creds)
    # The keys live only in the config file: none in the driver's environment. Ray's session logs go
    # to a folder of this test's own (short: Ray's socket paths have a length limit).
    ray_tmp = tempfile.mkdtemp(prefix="rs3", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or "CHECKSUM" in k} | {
        "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "cluster.run", "--config", str(config)]
    first_log = tmp / "first-run.log"   # a file, not a pipe: nobody reads it while the job runs
    with open(first_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while not storage.list_files(f"{out}/scored", (".parquet",), recursive=True):
            assert proc.poll() is None and time.time() - t0 < 300, "no shard committed:\n" + first_log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)            # the driver, mid-run, from outside
        proc.wait(timeout=30)
    finally:
        _kill_group_leftovers(proc)                  # and the local Ray it started, as a lost node would
    first_out = first_log.read_text()
    partial = _ids(out)
    t1 = time.time()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"[test_s3] killed after {len(partial)} prompts committed; the resumed run took {time.time() - t1:.0f}s")
    yield {"bucket": bucket, "out": out, "partial": partial, "res": res, "logs": [first_out, res.stdout, res.stderr],
           "ray_tmp": Path(ray_tmp), "server": s3_server}
    storage.configure(None)


def test_a_killed_driver_on_s3_resumes_with_every_prompt_once_and_no_partial_object(s3_run):
    res, out = s3_run["res"], s3_run["out"]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert 0 < len(s3_run["partial"]) < N_PROMPTS and "already committed" in res.stdout
    assert sorted(_ids(out)) == [f"s{i:02d}" for i in range(N_PROMPTS)]         # every prompt exactly once
    fs, bucket = storage.filesystem(s3_run["bucket"])
    keys = _keys(fs, bucket)
    # nothing under a temporary name, as the store lists it. (On its own disk rclone may keep a
    # hidden .rclone_temp_put_* file of an upload the killed driver cut off; the S3 API never
    # lists it, and a real object store has no such file.)
    assert not [k for k in keys if k.endswith(".tmp") or "/." in k or "rclone_temp" in k], keys
    for key in keys:                                  # no partial object: every Parquet object reads whole
        if key.endswith(".parquet"):
            pq.read_table(key, filesystem=fs)
    scored = {storage.basename(p) for p in storage.glob(f"{out}/scored/*.parquet")}
    assert scored == {storage.basename(p) for p in storage.glob(f"{out}/pairs/*.parquet")}
    manifest = json.loads(storage.read_text(f"{out}/manifest.json"))
    c = manifest["counts"]
    # three JSONL objects and one Parquet object read as one prompt set; the broken line quarantined
    assert c["balanced"] and c["prompts_in"] == N_PROMPTS + 1 and c["quarantined"] == 1
    [bad] = [json.loads(line) for line in storage.read_text(f"{out}/quarantine.jsonl").splitlines()]
    prefix = f"{s3_run['bucket']}/prompts/"
    assert bad["source"] == f"{prefix}b.jsonl" and bad["line"] == f"{prefix}b.jsonl:2"


def test_no_object_or_log_of_an_s3_run_holds_the_keys(s3_run):
    secrets = [s3_run["server"].access_key.encode(), s3_run["server"].secret_key.encode()]
    fs, bucket = storage.filesystem(s3_run["bucket"])
    places = {f"s3://{k}": fs.open_input_stream(k).read() for k in _keys(fs, bucket)}
    places |= {f"driver output {i}": text.encode() for i, text in enumerate(s3_run["logs"])}
    places |= {str(p): p.read_bytes() for p in s3_run["ray_tmp"].rglob("*") if p.is_file() and not p.is_symlink()}
    assert any("/logs/" in name for name in places) and any(name.endswith("manifest.json") for name in places)
    leaks = [name for name, data in places.items() if any(s in data for s in secrets)]
    assert not leaks, f"object-store keys found in: {leaks}"
    manifest = json.loads(storage.read_text(f"{s3_run['out']}/manifest.json"))
    assert manifest["config"]["storage"]["secret_access_key"] == "**********"
