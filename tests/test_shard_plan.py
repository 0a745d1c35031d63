"""cluster.plan: how a job's prompts are cut into shards, and what a resumed run checks
(plan.json, the committed shards' footers) before it extends a folder."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from cluster.config import RunConfig
from cluster.plan import SHARD_META, RunRefused, check_resume, plan_shards, shard_sizes
from generation.prompts import scan_prompts
from generation.schema import PROMPT_INDEX_SCHEMA
from rewarding.schema import SCORED_SCHEMA
from rsdpo.shards import shard_path, write_shard

MODELS = {"policy": {"sha256": "p"}, "reward": {"sha256": "r"}}


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
    ids = [f"p{i:03d}" for i in range(37)]
    index = pa.table({"prompt_id": ids, "prompt_digest": [bytes(16)] * 37, "file": [0] * 37, "locator": list(range(37))},
                     schema=PROMPT_INDEX_SCHEMA)
    cfg = RunConfig(shard_size=5, seed=1)
    plan = plan_shards(index, cfg)
    assert [s.name for s in plan] == [f"shard-{i:05d}" for i in range(len(plan))]
    assert sorted(i for s in plan for i in s.rows) == list(range(37))
    assert [len(s.rows) for s in plan] == shard_sizes(37, 5)
    again = plan_shards(index, cfg)[3]  # seeded: the same cut every time
    assert (again.rows == plan[3].rows).all() and again.digest == plan[3].digest


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _resume(tmp_path, source):
    cfg = RunConfig(output_dir=str(tmp_path / "out"), shard_size=2, prompts={"source": str(source)})
    index = scan_prompts(cfg.prompts)
    return cfg, plan_shards(index.table, cfg), check_resume(cfg, plan_shards(index.table, cfg), False, MODELS)


ROWS = [{"prompt_id": f"q{i}", "prompt": f"question {i}", "reference": f"answer {i}"} for i in range(6)]


@pytest.mark.parametrize("edit", [{"prompt": "question 3, reworded"}, {"reference": "another answer"}])
def test_editing_a_prompt_under_its_id_is_refused(tmp_path, edit):
    """The plan held ids only: a prompt's text or reference edited under an explicit id resumed
    silently, mixing shards sampled from the old text with shards from the new."""
    source = tmp_path / "p.jsonl"
    _write(source, ROWS)
    _resume(tmp_path, source)
    _write(source, [r | edit if r["prompt_id"] == "q3" else r for r in ROWS])
    with pytest.raises(RunRefused, match="text or reference edited"):
        _resume(tmp_path, source)
    _write(source, ROWS)  # the original text resumes again
    _resume(tmp_path, source)


def test_other_library_versions_are_refused(tmp_path, monkeypatch):
    source = tmp_path / "p.jsonl"
    _write(source, ROWS)
    _resume(tmp_path, source)
    import cluster.plan

    real = cluster.plan.library_versions
    monkeypatch.setattr(cluster.plan, "library_versions", lambda: real() | {"torch": "0.0.1"})
    with pytest.raises(RunRefused, match=r"other library versions .*'torch'"):
        _resume(tmp_path, source)


def test_committed_shards_are_found_and_checked_by_their_footers(tmp_path):
    source = tmp_path / "p.jsonl"
    _write(source, ROWS)
    cfg, plan, done = _resume(tmp_path, source)
    assert done == set()
    empty = SCORED_SCHEMA.empty_table()
    scored = Path(cfg.out) / "scored"
    write_shard(empty, shard_path(scored, plan[1].name),
                SCORED_SCHEMA.with_metadata({SHARD_META: json.dumps({"digest": plan[1].digest}).encode()}))
    assert _resume(tmp_path, source)[2] == {plan[1].name}
    # a shard file whose footer names other prompts than the plan's shard of that name
    write_shard(empty, shard_path(scored, plan[0].name),
                SCORED_SCHEMA.with_metadata({SHARD_META: json.dumps({"digest": plan[2].digest}).encode()}))
    with pytest.raises(RunRefused, match="holds other prompts than the plan's shard-00000"):
        _resume(tmp_path, source)


def test_plan_json_stays_small(tmp_path):
    """Per shard a count and a digest, not every id: 10k prompts in 16-prompt shards."""
    source = tmp_path / "p.jsonl"
    _write(source, [{"prompt_id": f"some-longer-prompt-id-{i:08d}", "prompt": f"q{i}"} for i in range(10_000)])
    cfg = RunConfig(output_dir=str(tmp_path / "out"), shard_size=16, prompts={"source": str(source)})
    check_resume(cfg, plan_shards(scan_prompts(cfg.prompts).table, cfg), False, MODELS)
    size = (Path(cfg.out) / "plan.json").stat().st_size
    assert size < 70 * (10_000 // 16) + 2000, size
