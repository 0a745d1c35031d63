"""The pipeline's commit tasks and finish step, run as plain functions on scored tables (no Ray session,
no engines: the actors' output is what they take): the pairs folder gets its manifest and card from
the one writer, with the counts of every committed shard, also those of an earlier session."""

import json
import time
from pathlib import Path

import pyarrow as pa

from cluster import actors
from cluster.actors import commit_shard, pack
from cluster.config import RunConfig
from cluster.pipeline import RunState, finish
from cluster.plan import plan_shards
from generation.prompts import PromptIndex
from generation.schema import PROMPT_INDEX_SCHEMA
from pairing.__main__ import run as pair_folder
from pairing.card import COUNT_LABELS
from rsdpo.manifest import read_manifest


def _batch(table: pa.Table, shard: str) -> pa.Table:
    """A shard as the scorer actors hand it on: one row (cluster/actors.py)."""
    now = time.time()
    return pack(table, {actors.SHARD: shard, actors.SHARD_DIGEST: "d", actors.T_READ: now, actors.T_SAMPLE_START: now,
                        actors.T_SAMPLE: 1.0, actors.ENGINE_BUSY: 1.0, actors.ENGINE_ADMIT: 0.1, actors.SAMPLER_ID: "actor-1",
                        actors.SAMPLER_NODE: "node-a", actors.SAMPLER_READY: now, actors.T_SCORE_START: now,
                        actors.T_SCORE: 0.5, actors.SCORER_ID: "actor-2", actors.SCORER_NODE: "node-b",
                        actors.SCORER_READY: now})


def test_finish_writes_the_pairs_card_and_manifest_of_every_committed_shard(tmp_path, build):
    cfg = RunConfig(output_dir=str(tmp_path / "run"), pairing={"tau": 0.3, "license": "cc-by-nc-4.0"})
    tables = {"shard-00000": build.random(8, 4, seed=1, prefix="a"),
              "shard-00001": pa.concat_tables([build.random(7, 4, seed=2, prefix="b"),
                                               build.table([build.row("b-err", [], texts=[], error="generate: x")])])}
    # shard-00000 was committed by an earlier session; this one commits shard-00001 only
    commit_shard(_batch(tables["shard-00000"], "shard-00000"), cfg.output_dir, cfg.pairing.model_dump(mode="json"),
                 cfg.storage)
    row = commit_shard(_batch(tables["shard-00001"], "shard-00001"), cfg.output_dir,
                       cfg.pairing.model_dump(mode="json"), cfg.storage).to_pylist()[0]
    ids = [pid for t in tables.values() for pid in t.column("prompt_id").to_pylist()]
    index = pa.table({"prompt_id": ids, "prompt_digest": [bytes(16)] * len(ids), "file": [0] * len(ids),
                      "locator": range(len(ids))}, schema=PROMPT_INDEX_SCHEMA)
    models = {"policy": {"path": "/models/policy-sft", "sha256": "ab" * 32},
              "reward": {"path": "/models/rm", "sha256": "cd" * 32}}
    run = finish(RunState(cfg=cfg, index=PromptIndex(index, ["prompts.jsonl"]), plan=plan_shards(index, cfg),
                          models=models, t_start=time.time() - 10, committed=[row]))

    out = Path(cfg.out)
    manifest = read_manifest(out / "pairs")
    assert set(manifest["counts"]) == set(COUNT_LABELS) and manifest["made_by"].startswith("rsdpo run")
    assert manifest["counts"]["prompts_in"] == 16 and manifest["counts"]["prompts_errored"] == 1
    assert manifest["counts"]["pairs"] == run["counts"]["pairs"] > 0
    assert manifest["config"]["generation"]["k"] == cfg.generation.k and manifest["inputs"] == ["../scored"]

    # The same scored shards paired by `python -m pairing` give the same counts.
    pair_folder(str(out / "scored"), str(tmp_path / "cli"), cfg.pairing)
    assert read_manifest(tmp_path / "cli")["counts"] == manifest["counts"]

    card = (out / "pairs" / "README.md").read_text()
    assert "Made by `rsdpo run (the cluster pipeline)`" in card and "license: cc-by-nc-4.0" in card
    assert f"| candidate ordered pairs evaluated | {manifest['counts']['candidates_evaluated']} |" in card
    assert "- policy: `policy-sft`" in card and "/models/" not in card and str(tmp_path) not in card
    run_manifest = json.loads((out / "manifest.json").read_text())
    assert run_manifest["raw_threshold"] == manifest["raw_threshold"]
    # where this session's shard ran (the earlier session's shard is not this run's to report)
    assert run_manifest["placement"] == [{"shard": "shard-00001", "sampler_id": "actor-1", "sampler_node": "node-a",
                                          "scorer_node": "node-b"}]
