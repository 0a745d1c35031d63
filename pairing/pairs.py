"""make_pairs: scored shard (one row per prompt, k responses + rewards) -> TRL preference pairs.

    python -m pairing --input SCORED --output PAIRS [key=value ...]     # the CLI around it

Steps, all vectorised over the whole table: validate the schema; route bad rows (non-null
`error`, NaN/inf or null rewards, list lengths that disagree, null response text, missing
prompt_id) to `stats["errors"]`; pad rewards to (n, k); mark eligible responses (drop truncated
ones if configured, then exact-duplicate texts, keeping the first); apply the strategy's batch
rule (pairing/rules.py); drop pairs whose two texts are identical (possible only without dedup);
cap pairs per prompt keeping the largest raw gaps; given the policy's tokenizer and the training
max_length, drop (and count) pairs that training would see as one sequence (pairing/truncation.py);
shuffle rows with a seeded Generator; build conversational TRL rows (pairing/schema.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from generation.schema import (
    ERROR,
    FINISH_REASONS,
    MESSAGE,
    MESSAGES,
    NUM_TOKENS,
    PROMPT,
    PROMPT_ID,
    RESPONSES,
)
from pairing import rules
from pairing.config import PairingConfig, Strategy
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
from pairing.truncation import Cut, truncation_cuts
from rewarding.schema import REWARDS, SCORED_SCHEMA
from rsdpo.shards import conform

TRUNCATED = "length"        # finish reason of a response that hit max_tokens (generation/schema.py)
ASSISTANT = "assistant"     # role of the chosen / rejected turn in TRL's conversational format
_CHUNK_CELLS = 1 << 20      # (rows, k, k) cells per block of the dedup comparison


@dataclass
class PairingResult:
    pairs: pa.Table          # exactly PAIRS_SCHEMA, rows shuffled
    stats: dict              # counts (see make_pairs) + "errors": [{prompt_id, reason}]
    spreads: np.ndarray      # (usable prompts,) max - min eligible reward per prompt, raw reward units


@dataclass
class Candidates:
    """One scored table prepared for pairing: independent of eta / tau / strategy (sweeps reuse it)."""

    table: pa.Table          # the conformed scored table
    texts: pa.Array          # flat response texts; response j of row i is texts[starts[i] + j]
    starts: np.ndarray       # (n,) int64
    rewards: np.ndarray      # (n, k) float64 raw rewards, 0.0 where not eligible
    mask: np.ndarray         # (n, k) bool: eligible response (usable row, kept by truncation/dedup)
    text_ids: np.ndarray     # (n, k) int64: equal ids <=> equal texts
    errored: np.ndarray      # (n,) bool: row routed to errors, never paired
    errors: list[dict]       # [{prompt_id, reason}] for errored rows
    dropped_truncated: int
    dropped_duplicate: int


def _lists(table: pa.Table, name: str) -> pa.ListArray:
    col = table.column(name)
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def prepare(scored: pa.Table, config: PairingConfig) -> Candidates:
    """Validate, route bad rows to errors, pad rewards to (n, k) and mark eligible responses."""
    table = conform(scored, SCORED_SCHEMA, "make_pairs input")
    n = table.num_rows
    responses, rewards, finish = (_lists(table, c) for c in (RESPONSES, REWARDS, FINISH_REASONS))
    lens = pc.list_value_length(responses).fill_null(0).to_numpy().astype(np.int64)
    starts = responses.offsets.to_numpy()[:-1].astype(np.int64)    # absolute into responses.values

    reasons: dict[int, str] = {}
    ids = table.column(PROMPT_ID).to_pylist()
    error_col = table.column(ERROR)
    for i in np.flatnonzero(error_col.is_valid().to_numpy(zero_copy_only=False)):
        reasons[int(i)] = str(error_col[int(i)].as_py())
    n_rewards = pc.list_value_length(rewards).fill_null(0).to_numpy()
    n_finish = pc.list_value_length(finish).fill_null(0).to_numpy()
    for i in np.flatnonzero((n_rewards != lens) | (n_finish != lens)):
        reasons.setdefault(int(i), f"length mismatch: {lens[i]} responses, {n_rewards[i]} rewards, "
                                   f"{n_finish[i]} finish_reasons")
    for i, pid in enumerate(ids):
        if not pid:
            reasons.setdefault(i, "missing prompt_id")

    # Gather the k values of every still-usable row into (n, k) arrays.
    usable = np.ones(n, dtype=bool)
    usable[list(reasons)] = False
    k = int(lens[usable].max()) if usable.any() else 0
    take_lens = np.where(usable, lens, 0)
    row_of = np.repeat(np.arange(n), take_lens)                                   # (total,)
    pos = np.arange(len(row_of)) - np.repeat(np.cumsum(take_lens) - take_lens, take_lens)
    reward_flat = rewards.values.to_numpy(zero_copy_only=False)[rewards.offsets.to_numpy()[row_of] + pos]
    text_flat = starts[row_of] + pos
    null_text = responses.values.is_null().to_numpy(zero_copy_only=False)[text_flat]
    bad = ~np.isfinite(reward_flat) | null_text
    for e in np.flatnonzero(bad):
        i, j = int(row_of[e]), int(pos[e])
        if i not in reasons:
            reasons[i] = (f"null response text at index {j}" if null_text[e]
                          else f"non-finite reward {float(reward_flat[e])} at index {j}")
    errored = ~usable
    errored[list(reasons)] = True

    ok = ~errored[row_of]
    row_of, pos = row_of[ok], pos[ok]
    mask = np.zeros((n, k), dtype=bool)
    mask[row_of, pos] = True
    reward_pad = np.zeros((n, k))
    reward_pad[row_of, pos] = reward_flat[ok]
    text_ids = np.full((n, k), -1, dtype=np.int64)
    encoded = pc.dictionary_encode(responses.values, null_encoding="encode").indices
    text_ids[row_of, pos] = encoded.to_numpy(zero_copy_only=False)[text_flat[ok]]

    dropped_truncated = 0
    if config.exclude_truncated:
        truncated = np.zeros((n, k), dtype=bool)
        is_length = pc.equal(finish.values, TRUNCATED).fill_null(False).to_numpy(zero_copy_only=False)
        truncated[row_of, pos] = is_length[finish.offsets.to_numpy()[row_of] + pos]
        dropped_truncated = int((mask & truncated).sum())
        mask &= ~truncated

    dropped_duplicate = 0
    if config.dedup_responses and k > 1:
        earlier = np.tri(k, k, -1, dtype=bool)                 # earlier[j, l]: l < j
        step = max(1, _CHUNK_CELLS // (k * k))
        for s in range(0, n, step):
            t, m = text_ids[s:s + step], mask[s:s + step]
            # duplicate[b, j]: an earlier eligible response of the same prompt has the same text
            duplicate = ((t[:, :, None] == t[:, None, :]) & m[:, None, :] & earlier).any(axis=2) & m
            dropped_duplicate += int(duplicate.sum())
            m &= ~duplicate                                    # in place: m is a view of mask
    reward_pad[~mask] = 0.0

    errors = [{"prompt_id": ids[i], "reason": reasons[i]} for i in sorted(reasons)]
    return Candidates(table, responses.values, starts, reward_pad, mask, text_ids, errored, errors,
                      dropped_truncated, dropped_duplicate)


def select(cand: Candidates, config: PairingConfig) -> rules.Pairs:
    """(rows, chosen, rejected) for `config`'s strategy, identical texts dropped, capped per prompt."""
    r, m = cand.rewards, cand.mask
    match config.strategy:
        case Strategy.RS_DPO:
            rows, ch, rj = rules.rs_dpo_batch(r, m, config.tau, config.eta)
        case Strategy.BEST_WORST:
            rows, ch, rj = rules.best_worst_batch(r, m)
        case Strategy.BEST_RANDOM:
            keys = np.array([rules.stable_key(config.seed, pid or "") for pid in
                             cand.table.column(PROMPT_ID).to_pylist()], dtype=np.uint64)
            rows, ch, rj = rules.best_random_batch(r, m, keys)
        case Strategy.ALL_ABOVE_MARGIN:
            rows, ch, rj = rules.all_above_margin_batch(r, m, config.margin)
        case Strategy.SIGMA:
            rows, ch, rj = rules.sigma_batch(r, m, config.sigma_c)
    if not config.dedup_responses:
        keep = cand.text_ids[rows, ch] != cand.text_ids[rows, rj]
        rows, ch, rj = rows[keep], ch[keep], rj[keep]
    cap = config.max_pairs_per_prompt
    if cap is not None and len(rows):
        gap = r[rows, ch] - r[rows, rj]
        order = np.lexsort((rj, ch, -gap, rows))               # by row, then largest gap first
        sorted_rows = rows[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
        keep = np.sort(order[rank < cap])                      # back to (row, chosen, rejected) order
        rows, ch, rj = rows[keep], ch[keep], rj[keep]
    return rows, ch, rj


def _turns(texts: pa.Array) -> pa.Array:
    """[{"role": "assistant", "content": text}] per text: TRL's conversational completion."""
    turn = pa.StructArray.from_arrays([pa.repeat(ASSISTANT, len(texts)), texts], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(len(texts) + 1, dtype=np.int32)), turn, type=MESSAGES)


def make_pairs(scored: pa.Table, config: PairingConfig, *, shuffle_seed: int = 0,
               tokenizer=None) -> PairingResult:
    """Pair one scored table (SCORED_SCHEMA) with `config`'s strategy. With `tokenizer` (the policy's,
    pairing/truncation.py load_tokenizer) and config.max_length, pairs that the training length would
    make one sequence are dropped and counted.

    stats: prompts_in, prompts_with_pairs, prompts_without_pairs (usable, no pair), prompts_errored,
    pairs, candidates_evaluated (ordered (j, l), j != l, among eligible responses: m(m-1) per usable
    prompt), responses_in, responses_eligible, responses_dropped_truncated,
    responses_dropped_duplicate, pairs_dropped_<Cut> (one count per truncation cut; checked only
    with a tokenizer and max_length), pairs_chosen_longer (pairs whose chosen answer has more
    generated tokens than the rejected), pairs_length_gap_tokens (sum over pairs of chosen minus
    rejected generated tokens; / pairs = the mean gap), errors ([{prompt_id, reason}], one per
    errored row). Every count sums across shards (merge_stats).
    """
    cand = prepare(scored, config)
    rows, ch, rj = select(cand, config)
    dropped = dict.fromkeys(Cut, 0)
    if tokenizer is not None and config.max_length is not None and len(rows):
        cuts = truncation_cuts(tokenizer, cand.table.column(PROMPT).take(rows).to_pylist(),
                               cand.texts.take(cand.starts[rows] + ch).to_pylist(),
                               cand.texts.take(cand.starts[rows] + rj).to_pylist(), config.max_length)
        for cut in cuts:
            if cut is not None:
                dropped[cut] += 1
        keep = np.array([cut is None for cut in cuts])
        rows, ch, rj = rows[keep], ch[keep], rj[keep]
    tokens = _lists(cand.table, NUM_TOKENS)
    token_flat = tokens.values.to_numpy(zero_copy_only=False)
    gap = (token_flat[tokens.offsets.to_numpy()[rows] + ch].astype(np.int64)
           - token_flat[tokens.offsets.to_numpy()[rows] + rj])  # (pairs,) generated tokens, chosen - rejected
    perm = np.random.default_rng(shuffle_seed).permutation(len(rows))
    rows, ch, rj = rows[perm], ch[perm], rj[perm]

    table = cand.table
    pairs = pa.Table.from_pydict({
        PROMPT: table.column(PROMPT).take(rows),
        CHOSEN: _turns(cand.texts.take(cand.starts[rows] + ch)),
        REJECTED: _turns(cand.texts.take(cand.starts[rows] + rj)),
        PROMPT_ID: table.column(PROMPT_ID).take(rows),
        CHOSEN_REWARD: pa.array(cand.rewards[rows, ch], pa.float64()),
        REJECTED_REWARD: pa.array(cand.rewards[rows, rj], pa.float64()),
        CHOSEN_INDEX: pa.array(ch.astype(np.int32)),
        REJECTED_INDEX: pa.array(rj.astype(np.int32)),
        STRATEGY: pa.repeat(str(config.strategy), len(rows)),
    }, schema=PAIRS_SCHEMA)

    eligible = cand.mask.sum(axis=1)
    n_errored = int(cand.errored.sum())
    with_pairs = int(np.count_nonzero(np.bincount(rows, minlength=table.num_rows)))
    stats = {
        "prompts_in": table.num_rows,
        "prompts_with_pairs": with_pairs,
        "prompts_without_pairs": table.num_rows - n_errored - with_pairs,
        "prompts_errored": n_errored,
        "pairs": len(rows),
        "candidates_evaluated": int((eligible * (eligible - 1)).sum()),
        "responses_in": int(pc.sum(pc.list_value_length(table.column(RESPONSES))).as_py() or 0),
        "responses_eligible": int(eligible.sum()),
        "responses_dropped_truncated": cand.dropped_truncated,
        "responses_dropped_duplicate": cand.dropped_duplicate,
        **{f"pairs_dropped_{cut.value}": n for cut, n in dropped.items()},
        "pairs_chosen_longer": int((gap > 0).sum()),
        "pairs_length_gap_tokens": int(gap.sum()),
        "errors": cand.errors,
    }
    return PairingResult(pairs, stats, spreads(cand))


def spreads(cand: Candidates) -> np.ndarray:
    """(usable prompts,) max - min eligible reward of every prompt with >= 1 eligible response."""
    top = np.where(cand.mask, cand.rewards, -np.inf).max(axis=1, initial=-np.inf)
    bottom = np.where(cand.mask, cand.rewards, np.inf).min(axis=1, initial=np.inf)
    return (top - bottom)[cand.mask.any(axis=1)]


def merge_stats(parts: list[dict]) -> dict:
    """Sum the counts of several make_pairs stats (shards, batches) and concatenate their errors."""
    merged: dict = {"errors": []}
    for part in parts:
        for key, value in part.items():
            if key == "errors":
                merged["errors"].extend(value)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def coverage_warning(config: PairingConfig, stats: dict, spreads: np.ndarray) -> str | None:
    """A warning when fewer than config.min_prompts_with_pairs_warn of usable prompts got a pair, else None.

    For rs-dpo it names a tau that would fit: a prompt can pair only if its reward spread
    (max - min) exceeds tau * ln(eta / (1 - eta)), so tau just below q / ln(eta / (1 - eta)), with q
    the spread that the wanted share of prompts exceeds, would reach that share.
    """
    usable = stats["prompts_in"] - stats["prompts_errored"]
    if usable <= 0:
        return f"no usable prompts: all {stats['prompts_in']} rows errored" if stats["prompts_in"] else None
    share, want = stats["prompts_with_pairs"] / usable, config.min_prompts_with_pairs_warn
    if share >= want:
        return None
    msg = (f"only {stats['prompts_with_pairs']} of {usable} usable prompts ({share:.0%}) yielded a pair "
           f"(warning below {want:.0%}) with strategy={config.strategy}")
    if len(spreads) == 0:
        return msg + "; no prompt has an eligible response"
    q = float(np.quantile(spreads, 1.0 - want, method="lower"))
    spread_note = f"per-prompt reward spread (max - min): median {np.median(spreads):.4g}, max {spreads.max():.4g}"
    if q <= 0:
        return msg + f"; {spread_note}: most prompts have tied rewards or fewer than 2 eligible responses"
    match config.strategy:
        case Strategy.RS_DPO:
            logit = math.log(config.eta / (1 - config.eta))
            fit = _round_down(q / logit)
            return (msg + f"; at tau={config.tau}, eta={config.eta} a pair needs a raw reward gap > "
                    f"{rules.raw_threshold(config.tau, config.eta):.4g}, but the {spread_note}. "
                    f"tau={fit:g} (threshold {fit * logit:.4g}) would give about {want:.0%} of prompts a pair "
                    f"with this reward model's scale")
        case Strategy.ALL_ABOVE_MARGIN:
            return msg + f"; {spread_note}: margin={_round_down(q):g} would give about {want:.0%} a pair"
        case _:
            return msg + f"; {spread_note}"


def _round_down(value: float) -> float:
    """Two significant digits, strictly below `value` (a suggestion that stays on the accepting side)."""
    unit = 10.0 ** (math.floor(math.log10(value)) - 1)
    down = math.floor(value / unit) * unit
    return down - unit if down >= value else down
