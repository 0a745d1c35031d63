"""The data job's shard envelope and commit (cluster/actors.py), without a Ray cluster: a shard is one
row through the job, and its commit writes pairs then scored, locally or on a real S3 server."""

import numpy as np
import pyarrow as pa

from cluster.actors import (
    ENGINE_ADMIT,
    ENGINE_BUSY,
    SAMPLER_ID,
    SAMPLER_NODE,
    SAMPLER_READY,
    SCORER_ID,
    SCORER_NODE,
    SCORER_READY,
    SHARD,
    SHARD_DIGEST,
    T_READ,
    T_SAMPLE,
    T_SAMPLE_START,
    T_SCORE,
    T_SCORE_START,
    commit_shard,
    pack,
    unpack,
)
from generation import schema as g
from pairing.schema import PAIRS_SCHEMA
from rewarding import schema as rs
from rsdpo import storage
from rsdpo.shards import read_shard
from rsdpo.storage import StorageConfig

META = {T_SAMPLE: 1.5, ENGINE_BUSY: 1.0, ENGINE_ADMIT: 0.1, SAMPLER_ID: "actor-1", T_SCORE: 0.5,  # the actors' bookkeeping
        SAMPLER_NODE: "node-a", SCORER_NODE: "node-b",
        SHARD_DIGEST: "d", T_READ: 0.0, T_SAMPLE_START: 0.0, SAMPLER_READY: 0.0, T_SCORE_START: 0.0,
        SCORER_ID: "actor-2", SCORER_READY: 0.0}


def _scored(n: int, k: int = 4, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rewards = (rng.normal(size=k) * 3).tolist()
        rows.append({g.PROMPT_ID: f"p{seed}-{i}", g.PROMPT: [{"role": "user", "content": f"q{i}"}],
                     g.REFERENCE: None, g.SOURCE: "t", g.RESPONSES: [f"reply {i}.{j}" for j in range(k)],
                     g.FINISH_REASONS: ["stop"] * k, g.NUM_TOKENS: [2] * k, g.PROMPT_TOKENS: 3, g.SEED: 0,
                     g.ERROR: None, rs.REWARDS: rewards, rs.REWARD_MEAN: float(np.mean(rewards)),
                     rs.REWARD_STD: float(np.std(rewards)), rs.REWARD_MIN: min(rewards),
                     rs.REWARD_MAX: max(rewards), rs.REWARD_TRUNCATED: 0})
    return pa.Table.from_pylist(rows, schema=rs.SCORED_SCHEMA)


def test_a_shard_travels_as_one_row_and_comes_back_whole():
    a, b = _scored(5, seed=1), _scored(3, seed=2)
    batch = pa.concat_tables([pack(a, {SHARD: "shard-00000", **META}), pack(b, {SHARD: "shard-00001", **META})])
    assert batch.num_rows == 2          # Ray Data splits blocks between rows: never inside a shard
    (m0, t0), (m1, t1) = unpack(batch)
    assert (m0[SHARD], m1[SHARD]) == ("shard-00000", "shard-00001") and m0[T_SCORE] == 0.5
    assert t0.equals(a) and t1.equals(b)


def test_commit_writes_both_shards_and_nothing_else_on_the_object_store(s3_bucket):
    out = f"{s3_bucket}/run"
    scored = _scored(6)
    summary = commit_shard(pack(scored, {SHARD: "shard-00007", **META}), out, {"tau": 0.5, "seed": 0},
                           StorageConfig())
    row = summary.to_pylist()[0]
    assert row["shard"] == "shard-00007" and row["prompts"] == 6 and row["t_sample"] == 1.5
    assert storage.list_files(out, recursive=True) == [f"{out}/pairs/data/shard-00007.parquet",
                                                        f"{out}/scored/data/shard-00007.parquet"]
    assert read_shard(f"{out}/scored/data/shard-00007.parquet", rs.SCORED_SCHEMA).equals(scored)
    assert read_shard(f"{out}/pairs/data/shard-00007.parquet", PAIRS_SCHEMA).num_rows == row["pairs"] > 0
