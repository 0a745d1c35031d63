"""Pairs that the training length makes one sequence are dropped and counted (pairing/truncation.py),
with a real tokenizer and chat template (the tiny BPE one of rsdpo/tiny.py)."""

import json

import pyarrow.parquet as pq
import pytest

from pairing.__main__ import main
from pairing.card import STATS_KEY
from pairing.config import PairingConfig
from pairing.pairs import make_pairs
from pairing.truncation import Cut, truncation_cuts
from rsdpo.manifest import read_manifest
from rsdpo.shards import shard_metadata, shard_path

SAME_START = "The quick brown fox jumps over the lazy dog and the sea"
CHOSEN, REJECTED = SAME_START + " is calm.", SAME_START + " is rough, wild and loud."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from rsdpo.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def _lengths(tokenizer, build):
    conv = build.row("a", [1.0, 0.0])["prompt"]
    prompt = len(tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)["input_ids"])
    full = tokenizer.apply_chat_template(conv + [{"role": "assistant", "content": SAME_START}], tokenize=True)
    return prompt, len(full["input_ids"])


def test_truncation_that_makes_chosen_equal_rejected_drops_and_counts_the_pair(tokenizer, build):
    table = build.table([build.row("a", [1.0, 0.0], [CHOSEN, REJECTED]), build.row("b", [0.0, 2.0])])
    prompt_len, shared_len = _lengths(tokenizer, build)
    cfg = PairingConfig(strategy="best-worst")
    kept = make_pairs(table, cfg.model_copy(update={"max_length": 512}), tokenizer=tokenizer)
    assert kept.pairs.num_rows == 2 and kept.stats["pairs_dropped_difference_cut_off"] == 0

    # cut inside the shared start (the last token of SAME_START may merge with what follows): both
    # answers of prompt a become the same tokens; prompt b's answers differ at once and stay
    cut = make_pairs(table, cfg.model_copy(update={"max_length": shared_len - 2}), tokenizer=tokenizer)
    assert cut.pairs.column("prompt_id").to_pylist() == ["b"]
    assert cut.stats["pairs"] == 1 and cut.stats["pairs_dropped_difference_cut_off"] == 1
    assert cut.stats["pairs_dropped_prompt_fills_max_length"] == 0

    # a max_length the prompt alone fills: no answer token is seen, every pair goes
    none = make_pairs(table, cfg.model_copy(update={"max_length": 16}), tokenizer=tokenizer)
    assert prompt_len >= 16  # the ChatML prompt in the tiny BPE
    assert none.stats["pairs"] == 0 and none.stats["pairs_dropped_prompt_fills_max_length"] == 2
    assert truncation_cuts(tokenizer, [[{"role": "user", "content": "x " * 40}]], ["a"], ["b"], 16) == [Cut.PROMPT]
    # without a tokenizer nothing is checked
    assert make_pairs(table, cfg.model_copy(update={"max_length": 16})).stats["pairs"] == 2


def test_length_counts_of_kept_pairs(build):
    """best-worst: prompt a chosen 'one two three' (3 tokens) vs 'one' (1); prompt b chosen 'x' (1)
    vs 'x y z w' (4). chosen longer in 1 of 2 pairs; gap sum (3 - 1) + (1 - 4) = -1."""
    table = build.table([build.row("a", [1.0, 0.0], ["one two three", "one"]),
                         build.row("b", [2.0, 0.0], ["x", "x y z w"])])
    stats = make_pairs(table, PairingConfig(strategy="best-worst")).stats
    assert (stats["pairs_chosen_longer"], stats["pairs_length_gap_tokens"]) == (1, -1)


def test_cli_checks_at_the_configured_length_and_keeps_counts_in_the_shard(tmp_path, tokenizer, build):
    scored = tmp_path / "scored"
    scored.mkdir()
    pq.write_table(build.table([build.row("a", [1.0, 0.0], [CHOSEN, REJECTED])]), scored / "s0.parquet")
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    (tok_dir / "config.json").write_text("{}")  # resolve_model wants a model folder
    _, shared_len = _lengths(tokenizer, build)
    assert main(["--input", str(scored), "--output", str(tmp_path / "pairs"), "strategy=best-worst",
                 f"max_length={shared_len - 2}", f"tokenizer={tok_dir}"]) == 0
    shard = shard_path(tmp_path / "pairs", "s0")
    assert pq.read_table(shard).num_rows == 0
    assert json.loads(shard_metadata(shard)[STATS_KEY])["pairs_dropped_difference_cut_off"] == 1
    assert read_manifest(tmp_path / "pairs")["counts"]["pairs_dropped_difference_cut_off"] == 1
    card = (tmp_path / "pairs" / "README.md").read_text()
    assert "| pairs dropped at the training max_length: difference_cut_off | 1 |" in card
    assert f"training max_length = {shared_len - 2}" in card
