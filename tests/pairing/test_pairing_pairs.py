"""make_pairs: output schema and TRL shape, error rows, dedup, truncation, cap, shuffle, warnings."""

import re

import numpy as np
import pyarrow as pa
import pytest

from generation.schema import PROMPT, PROMPT_ID, RESPONSES
from pairing.config import PairingConfig, Strategy
from pairing.pairs import coverage_warning, make_pairs, merge_stats
from pairing.schema import (
    CHOSEN,
    CHOSEN_INDEX,
    CHOSEN_REWARD,
    PAIRS_SCHEMA,
    REJECTED,
    REJECTED_INDEX,
    REJECTED_REWARD,
    STRATEGY,
)
from rewarding.schema import REWARDS


def triples(result):
    p = result.pairs
    return sorted(zip(p.column(PROMPT_ID).to_pylist(), p.column(CHOSEN_INDEX).to_pylist(),
                      p.column(REJECTED_INDEX).to_pylist(), strict=True))


def test_schema_and_trl_conversational_shape(build):
    """rewards [0, 1, 3] at the paper defaults -> (2,0), (2,1); each row carries the prompt's messages
    and one assistant turn per side holding the indexed response text."""
    table = build.table([build.row("a", [0.0, 1.0, 3.0])])
    result = make_pairs(table, PairingConfig())
    assert result.pairs.schema.equals(PAIRS_SCHEMA)
    assert triples(result) == [("a", 2, 0), ("a", 2, 1)]
    responses = table.column(RESPONSES)[0].as_py()
    for row in result.pairs.to_pylist():
        assert row[PROMPT] == [{"role": "user", "content": "question a"}]
        assert row[CHOSEN] == [{"role": "assistant", "content": responses[row[CHOSEN_INDEX]]}]
        assert row[REJECTED] == [{"role": "assistant", "content": responses[row[REJECTED_INDEX]]}]
        assert row[CHOSEN_REWARD] == 3.0 and row[STRATEGY] == "rs-dpo"
    s = result.stats
    assert (s["prompts_in"], s["prompts_with_pairs"], s["prompts_without_pairs"], s["prompts_errored"],
            s["pairs"], s["candidates_evaluated"]) == (1, 1, 0, 0, 2, 6)


def test_bad_rows_are_errors_counted_never_paired(build):
    rows = [
        build.row("ok", [0.0, 3.0]),
        build.row("errcol", [0.0, 3.0], error="sampling: OOM"),
        build.row("nan", [0.0, float("nan"), 3.0]),
        build.row("inf", [float("inf"), 0.0]),
        build.row("short", [0.0, 3.0], texts=["x", "y", "z"]),
        build.row("finish", [0.0, 3.0], finish=["stop"]),
        build.row("", [0.0, 3.0]),
    ]
    result = make_pairs(build.table(rows), PairingConfig())
    assert triples(result) == [("ok", 1, 0)]
    s = result.stats
    assert (s["prompts_in"], s["prompts_errored"], s["prompts_with_pairs"], s["candidates_evaluated"]) == (7, 6, 1, 2)
    reasons = {e["prompt_id"]: e["reason"] for e in s["errors"]}
    assert reasons["errcol"] == "sampling: OOM"
    assert reasons["nan"].startswith("non-finite reward nan at index 1")
    assert reasons["inf"].startswith("non-finite reward inf at index 0")
    assert reasons["short"].startswith("length mismatch: 3 responses, 2 rewards")
    assert "1 finish_reasons" in reasons["finish"]
    assert reasons[""] == "missing prompt_id"


def test_dedup_keeps_the_first_copy_and_never_pairs_identical_texts(build):
    """texts [a, b, a], rewards [5, 0, 1] (a non-deterministic RM gave the copies different scores).
    Dedup on: index 2 is dropped; pairs (0,1) (gap 5). Dedup off: (0,2) has gap 4 > 1.73 but the same
    text on both sides, so it is dropped anyway; (2,1) has gap 1 < 1.73. Both -> [(0,1)]."""
    table = build.table([build.row("d", [5.0, 0.0, 1.0], texts=["a", "b", "a"])])
    on = make_pairs(table, PairingConfig())
    off = make_pairs(table, PairingConfig(dedup_responses=False))
    assert triples(on) == triples(off) == [("d", 0, 1)]
    assert on.stats["responses_dropped_duplicate"] == 1 and off.stats["responses_dropped_duplicate"] == 0
    assert on.stats["candidates_evaluated"] == 2 and off.stats["candidates_evaluated"] == 6


def test_exclude_truncated(build):
    """rewards [0, 5, 3], index 1 hit max_tokens. Excluded -> only {0, 2}: 3-0 = 3 > 1.73 -> (2,0).
    Kept -> (1,0) gap 5, (1,2) gap 2, (2,0) gap 3."""
    table = build.table([build.row("t", [0.0, 5.0, 3.0], finish=["stop", "length", "stop"])])
    assert triples(make_pairs(table, PairingConfig(exclude_truncated=True))) == [("t", 2, 0)]
    assert triples(make_pairs(table, PairingConfig())) == [("t", 1, 0), ("t", 1, 2), ("t", 2, 0)]
    assert make_pairs(table, PairingConfig(exclude_truncated=True)).stats["responses_dropped_truncated"] == 1


def test_cap_keeps_the_largest_gaps(build):
    """[0, 1, 3, 6] all-above-margin 0 -> 6 pairs with gaps (3,0)=6 (3,1)=5 (3,2)=3 (2,0)=3 (2,1)=2 (1,0)=1.
    Cap 2 -> (3,0), (3,1). Cap 3 -> gap 3 is tied between (2,0) and (3,2): ties go to the lower
    (chosen, rejected), so (2,0)."""
    table = build.table([build.row("c", [0.0, 1.0, 3.0, 6.0])])
    cfg = {"strategy": Strategy.ALL_ABOVE_MARGIN, "margin": 0.0}
    assert len(make_pairs(table, PairingConfig(**cfg)).pairs) == 6
    assert triples(make_pairs(table, PairingConfig(**cfg, max_pairs_per_prompt=2))) == [("c", 3, 0), ("c", 3, 1)]
    assert triples(make_pairs(table, PairingConfig(**cfg, max_pairs_per_prompt=3))) == [
        ("c", 2, 0), ("c", 3, 0), ("c", 3, 1)]


def test_shuffle_is_seeded_and_deterministic(build):
    table = build.random(40, 6, seed=1)
    cfg = PairingConfig(tau=0.3)
    a, b = make_pairs(table, cfg, shuffle_seed=7), make_pairs(table, cfg, shuffle_seed=7)
    c = make_pairs(table, cfg, shuffle_seed=8)
    assert a.pairs.equals(b.pairs)
    assert not a.pairs.equals(c.pairs) and triples(a) == triples(c)
    order = list(zip(a.pairs.column(PROMPT_ID).to_pylist(), a.pairs.column(CHOSEN_INDEX).to_pylist(), strict=True))
    assert order != sorted(order)                      # rows really are shuffled


@pytest.mark.parametrize("strategy", list(Strategy))
def test_every_strategy_emits_better_than_pairs_with_distinct_texts(build, strategy):
    table = build.random(30, 8, seed=2)
    result = make_pairs(table, PairingConfig(strategy=strategy, tau=0.5))
    rows = result.pairs.to_pylist()
    assert rows and result.pairs.schema.equals(PAIRS_SCHEMA)
    assert all(r[CHOSEN_REWARD] > r[REJECTED_REWARD] for r in rows)
    assert all(r[CHOSEN][0]["content"] != r[REJECTED][0]["content"] for r in rows)
    assert {r[STRATEGY] for r in rows} == {str(strategy)}
    assert len(set(triples(result))) == len(rows)
    if strategy in (Strategy.BEST_WORST, Strategy.BEST_RANDOM, Strategy.SIGMA):
        assert len(rows) == result.stats["prompts_with_pairs"] == 30


def test_best_random_depends_on_prompt_id_not_row_position(build):
    table = build.random(20, 6, seed=3)
    cfg = PairingConfig(strategy=Strategy.BEST_RANDOM, seed=11)
    reversed_rows = table.take(pa.array(np.arange(20)[::-1]))
    assert triples(make_pairs(table, cfg)) == triples(make_pairs(reversed_rows, cfg))
    assert triples(make_pairs(table, cfg)) != triples(make_pairs(table, PairingConfig(strategy="best-random", seed=12)))


def test_chunked_and_sliced_input(build):
    whole = build.random(12, 5, seed=4)
    chunked = pa.concat_tables([whole.slice(0, 5), whole.slice(5)])
    cfg = PairingConfig(tau=0.3)
    assert triples(make_pairs(chunked, cfg)) == triples(make_pairs(whole, cfg))
    part = make_pairs(whole.slice(5, 4), cfg)
    assert {t[0] for t in triples(part)} <= {f"p{i}" for i in range(5, 9)}
    assert part.stats["prompts_in"] == 4


def test_empty_input(build):
    result = make_pairs(build.table([]), PairingConfig())
    assert result.pairs.num_rows == 0 and result.pairs.schema.equals(PAIRS_SCHEMA)
    assert result.stats["prompts_in"] == 0 and len(result.spreads) == 0


def test_wrong_schema_is_refused(build):
    table = build.table([build.row("a", [0.0, 1.0])]).drop_columns([REWARDS])
    with pytest.raises(ValueError, match="missing column"):
        make_pairs(table, PairingConfig())


def test_warning_names_a_tau_that_fits(build):
    """Rewards ~ N(0, 0.2²), k 8: spreads around 0.6 stay under the paper's 1.73 threshold, so almost no
    prompt pairs; the suggested tau must lift the share of prompts with a pair to >= 50%."""
    table = build.random(200, 8, seed=5, scale=0.2)
    cfg = PairingConfig()
    result = make_pairs(table, cfg)
    warning = coverage_warning(cfg, result.stats, result.spreads)
    assert warning and "tau=1.0, eta=0.85" in warning
    tau = float(re.search(r"tau=([0-9.e-]+) \(threshold", warning).group(1))
    refit = make_pairs(table, PairingConfig(tau=tau))
    assert refit.stats["prompts_with_pairs"] >= 100
    assert coverage_warning(PairingConfig(tau=tau), refit.stats, refit.spreads) is None


def test_merge_stats_sums_counts_and_concatenates_errors(build):
    a = make_pairs(build.table([build.row("a", [0.0, 3.0]), build.row("x", [1.0], error="boom")]), PairingConfig())
    b = make_pairs(build.table([build.row("b", [0.0, 3.0, 9.0])]), PairingConfig())
    merged = merge_stats([a.stats, b.stats])
    assert merged["pairs"] == 4 and merged["prompts_in"] == 3 and merged["prompts_errored"] == 1
    assert merged["errors"] == [{"prompt_id": "x", "reason": "boom"}]

