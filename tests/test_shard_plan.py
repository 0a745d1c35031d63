"""cluster.pipeline.shard_sizes / plan_shards: how a job's prompts are cut into shards."""

import pyarrow as pa
import pytest

from cluster.config import RunConfig
from cluster.plan import plan_shards, shard_sizes


@pytest.mark.parametrize(("n", "size", "expected"), [
    (10, 4, [4, 4, 2]),                     # under four shards: plain cut, short last shard
    (32, 8, [8, 8, 8, 2, 2, 2, 2]),         # four shards' worth: the last 8 prompts in quarters
    (64, 8, [8] * 7 + [2] * 4),
    (66, 8, [8] * 8 + [2]),                 # the remainder is already small
    (12, 3, [3, 3, 3, 1, 1, 1]),            # a quarter of 3 rounds up to 1
    (13, 3, [3, 3, 3, 3, 1]),
    (12, 2, [2] * 5 + [1, 1]),
    (0, 8, []),
    (1, 8, [1]),
])
def test_shard_sizes(n, size, expected):
    assert shard_sizes(n, size) == expected
    assert sum(shard_sizes(n, size)) == n


def test_plan_covers_every_prompt_once_with_stable_names():
    prompts = pa.table({"prompt_id": [f"p{i:03d}" for i in range(37)]})
    cfg = RunConfig(shard_size=5, seed=1)
    plan = plan_shards(prompts, cfg)
    assert [name for name, _ in plan] == [f"shard-{i:05d}" for i in range(len(plan))]
    ids = [pid for _, t in plan for pid in t.column("prompt_id").to_pylist()]
    assert sorted(ids) == prompts.column("prompt_id").to_pylist()
    assert [t.num_rows for _, t in plan] == shard_sizes(37, 5)
    assert plan_shards(prompts, cfg)[3][1].equals(plan[3][1])  # seeded: the same cut every time
