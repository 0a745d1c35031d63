"""The one writer of a pairs folder's manifest and card: Hub-ready front matter that `datasets` and
huggingface_hub read as written, relative paths only, and the same counts whoever calls it."""

import re
import warnings

import numpy as np
import pyarrow as pa
import pytest
from huggingface_hub import DatasetCard

from pairing.__main__ import run as pair_folder
from pairing.card import CARD, COUNT_LABELS, read_pairs_stats, write_pairs_meta, write_pairs_shard
from pairing.config import PairingConfig
from pairing.pairs import make_pairs
from pairing.schema import PAIRS_SCHEMA
from rewarding.schema import SCORED_SCHEMA
from rsdpo.manifest import read_manifest, write_manifest
from rsdpo.shards import read_shard, shard_path, write_shard

# A slash that starts a path (not one inside `data/*.parquet` or `../scored`): /tmp/..., /root/...
ABSOLUTE = re.compile(r"(?<![\w.\-~])/[\w.\-]+/")


def _scored(tmp_path, build):
    d = tmp_path / "run" / "scored"
    write_shard(build.random(30, 6, seed=1, prefix="a"), shard_path(d, "shard-00000"), SCORED_SCHEMA)
    write_shard(pa.concat_tables([build.random(10, 6, seed=2, prefix="b"),
                                  build.table([build.row("b-err", [], texts=[], error="sampling: timeout")])]),
                shard_path(d, "shard-00001"), SCORED_SCHEMA)
    policy, reward = tmp_path / "models" / "policy-sft", tmp_path / "models" / "rm"
    write_manifest(d, {"stage": "scored", "config": {
        "prompts": {"source": str(tmp_path / "prompts.jsonl"), "split": "train", "subsets": None, "limit": None},
        "generation": {"k": 6, "max_tokens": 32, "temperature": 1.0, "top_p": 1.0, "seed": 0, "model": str(policy)},
        "rewarding": {"backend": "embedding", "max_length": 64, "model": str(reward)}},
        "models": {"policy": {"path": str(policy), "sha256": "ab" * 32}, "reward": {"path": str(reward), "sha256": "cd" * 32}}})
    return d


def test_card_front_matter_is_hub_ready_and_holds_no_absolute_path(tmp_path, build):
    scored = _scored(tmp_path, build)
    out = tmp_path / "run" / "pairs"
    pair_folder(str(scored), str(out), PairingConfig(tau=0.3, license="cc-by-nc-4.0"))
    text = (out / CARD).read_text()
    assert text.startswith("---\n")
    card = DatasetCard.load(out / CARD)            # huggingface_hub's own parser of the front matter
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-4.0"
    assert {"dpo", "preference", "synthetic", "trl"} <= set(data["tags"])
    assert data["task_categories"] == ["text-generation"] and data["size_categories"] == ["n<1K"]
    [config] = data["configs"]
    assert config["data_files"] == [{"split": "train", "path": "data/*.parquet"}]
    import datasets

    assert data["dataset_info"]["features"] == datasets.Features.from_arrow_schema(PAIRS_SCHEMA)._to_yaml_list()
    pairs = read_manifest(out)["counts"]["pairs"]
    assert data["dataset_info"]["splits"] == [{"name": "train", "num_examples": pairs}]
    assert "license" in text.split("## License")[1] and "carry over" in text
    assert "prompts: `prompts.jsonl`" in text and "- policy: `policy-sft`" in text and "k = 6" in text
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)
    assert str(tmp_path) not in text     # manifest.json keeps the resolved config (provenance); the card does not


def test_load_dataset_reads_the_folder_by_its_card(tmp_path, build):
    import datasets

    scored = _scored(tmp_path, build)
    out = tmp_path / "run" / "pairs"
    pair_folder(str(scored), str(out), PairingConfig(tau=0.3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = datasets.load_dataset(str(out), split="train")
    assert len(ds) == read_manifest(out)["counts"]["pairs"] > 0
    assert ds.features == datasets.Features.from_arrow_schema(PAIRS_SCHEMA)
    assert not [w for w in seen if "metadata block was not found" in str(w.message)]


def test_both_callers_write_the_same_counts(tmp_path, build):
    """`python -m pairing` (stats in memory) and the pipeline's commit tasks + finish (stats summed
    from the shards' footers) give the same manifest counts for the same scored shards."""
    scored = _scored(tmp_path, build)
    config = PairingConfig(tau=0.3)
    pair_folder(str(scored), str(tmp_path / "cli"), config)
    out = tmp_path / "pipe"
    shards, spread = [], []
    for i, name in enumerate(("shard-00000", "shard-00001")):
        result = make_pairs(read_shard(shard_path(scored, name), SCORED_SCHEMA), config, shuffle_seed=i)
        shards.append(write_pairs_shard(result, shard_path(out, name)))
        spread.append(result.spreads)
    manifest = write_pairs_meta(out, config, shards, made_by="rsdpo run", inputs=[scored], models={},
                                spreads=np.concatenate(spread))
    cli = read_manifest(tmp_path / "cli")
    assert manifest["counts"] == cli["counts"] and set(cli["counts"]) == set(COUNT_LABELS)
    assert cli["counts"]["candidates_evaluated"] > 0 and cli["counts"]["prompts_errored"] == 1
    assert {e["prompt_id"] for e in manifest["errors"]} == {"b-err"}
    card = (out / CARD).read_text()
    assert f"| candidate ordered pairs evaluated | {cli['counts']['candidates_evaluated']} |" in card


def test_shards_without_footer_stats_are_named(tmp_path, build):
    config = PairingConfig(tau=0.3)
    result = make_pairs(build.random(5, 4, seed=3), config)
    new = write_pairs_shard(result, tmp_path / "shard-00000.parquet")
    old = write_shard(result.pairs, tmp_path / "shard-00001.parquet", PAIRS_SCHEMA)   # as an older version did
    stats, notes = read_pairs_stats([new, old])
    assert stats["pairs"] == result.stats["pairs"] and "shard-00001.parquet" in notes[0]


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (250_000, "100K<n<1M")])
def test_size_category(rows, bucket):
    from pairing.card import _size_category

    assert _size_category(rows) == bucket
