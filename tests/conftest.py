"""Shared fixtures: tiny models built offline once per session, small pairs shards in TRL's
conversational preference format (the training tests, fast and integration tier)."""

import os
import random
from pathlib import Path

import pyarrow as pa
import pytest

from pairing.schema import PAIRS_SCHEMA
from rsdpo.shards import shard_path, write_shard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    from rsdpo.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory):
    from rsdpo.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_rm"), reward=True)


WORDS = "the quick brown fox jumps over lazy dog capital of france paris poem rain sea reward model".split()


def make_pairs(n: int, seed: int = 0, strategy: str = "rs-dpo") -> pa.Table:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return pa.Table.from_pylist([{
        "prompt": [{"role": "user", "content": text(8)}],
        "chosen": [{"role": "assistant", "content": text(10)}],
        "rejected": [{"role": "assistant", "content": text(12)}],
        "prompt_id": f"p{seed}-{i // 2}", "chosen_reward": 1.0 + i % 3, "rejected_reward": -1.0,
        "chosen_index": 0, "rejected_index": 1, "strategy": strategy,
    } for i in range(n)], schema=PAIRS_SCHEMA)


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    """Two shards, 48 pairs in all (as the pairing stage writes them)."""
    out = tmp_path_factory.mktemp("pairs")
    write_shard(make_pairs(32, seed=0), shard_path(out, "part-00000"), PAIRS_SCHEMA)
    write_shard(make_pairs(16, seed=1, strategy="best-worst"), shard_path(out, "part-00001"), PAIRS_SCHEMA)
    (out / "manifest.json").write_text("{}")  # a sidecar beside data/, never read as a shard
    return out


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (rclone serve s3, tests/s3server.py) on 127.0.0.1, one per test
    module: in a full CI run a session-long server was seen spinning at ~87% of a core, idle, for the
    rest of the run after the first modules had used it; a module's server ends with its module."""
    from s3server import CHECKSUM_ENV, start_s3_server

    # pyarrow's AWS SDK reads these when it makes a client: set them before any test makes one
    os.environ.update(CHECKSUM_ENV)
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "data")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A new, empty bucket on the session's S3 server (its s3:// URI); this process's standard AWS
    variables point at the server, as a user's shell would."""
    import hashlib

    from rsdpo import storage

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    storage.configure(None)
    name = "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return s3_server.make_bucket(name)
