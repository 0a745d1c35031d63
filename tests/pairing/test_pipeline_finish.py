"""The pipeline's commit tasks and finish step, run as plain functions on scored tables (no Ray session,
no engines: the actors' output is what they take): the pairs folder gets its manifest and card from
the one writer, with the counts of every committed shard, also those of an earlier session."""

import json
import time
from pathlib import Path

import pyarrow as pa

from cluster.actors import (
    ENGINE_BUSY,
    SAMPLER_ID,
    SAMPLER_NODE,
    SCORER_NODE,
    SHARD,
    T_SAMPLE,
    T_SCORE,
    commit_shard,
    pack,
)
from cluster.config import RunConfig
from cluster.pipeline import RunState, finish
from generation.prompts import LoadedPrompts
from generation.schema import PROMPTS_SCHEMA
from pairing.__main__ import run as pair_folder
from pairing.card import COUNT_LABELS
from rsdpo.manifest import read_manifest


def _batch(table: pa.Table, shard: str) -> pa.Table:
    """A shard as the scorer actors hand it on: one row (cluster/actors.py)."""
    return pack(table, {SHARD: shard, T_SAMPLE: 1.0, ENGINE_BUSY: 1.0, SAMPLER_ID: "actor-1", SAMPLER_NODE: "node-a",
                        T_SCORE: 0.5, SCORER_NODE: "node-b"})


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
    prompts = pa.concat_tables([t.select(PROMPTS_SCHEMA.names) for t in tables.values()])
    models = {"policy": {"path": "/models/policy-sft", "sha256": "ab" * 32},
              "reward": {"path": "/models/rm", "sha256": "cd" * 32}}
    run = finish(RunState(cfg=cfg, loaded=LoadedPrompts(prompts), plan=list(tables.items()), models=models,
                          t_start=time.time() - 10, committed=[row]))

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
