"""Check a scored or pairs folder against its schema and invariants; stop at the first violation class.

    python -m pairing validate DIR        # exit 0 + one-line summary, or 1 + "FILE: row I: CLASS: detail"

The kind is detected from the columns of the first shard. Pairs: one assistant turn each for
chosen/rejected, non-empty prompt_id, chosen text != rejected text, chosen_reward > rejected_reward,
no duplicate (prompt_id, chosen_index, rejected_index) across shards, and for rs-dpo rows the
rule sigmoid((r_c - r_r) / tau) > eta with tau and eta from DIR/manifest.json. Scored (rows
without an error): len(rewards) == len(responses) == len(finish_reasons), finite rewards,
reward_mean/std/min/max consistent with rewards; every row: non-empty prompt_id, unique across shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from generation.schema import ERROR, FINISH_REASONS, PROMPT_ID, RESPONSES
from pairing import rules
from pairing.config import Strategy
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
from rewarding.schema import REWARD_MAX, REWARD_MEAN, REWARD_MIN, REWARD_STD, REWARDS, SCORED_SCHEMA
from rsdpo import storage
from rsdpo.manifest import read_manifest
from rsdpo.shards import ShardError, list_shards, read_shard, sidecar_dir


class Violation(Exception):
    pass


def _first(bad: np.ndarray, path: str, kind: str, detail) -> None:
    """Raise a Violation naming the first row where `bad` holds; detail(i) describes that row."""
    rows = np.flatnonzero(bad)
    if len(rows):
        i = int(rows[0])
        raise Violation(f"{path}: row {i}: {kind}: {detail(i)} ({len(rows)} row(s) in this file)")


def _np(col) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else \
        col.combine_chunks().to_numpy(zero_copy_only=False)


def _check_pairs(path: str, table: pa.Table, seen: set, rule: tuple[float, float] | None) -> None:
    for side in (CHOSEN, REJECTED):
        col = table.column(side)
        _first(~_np(pc.equal(pc.list_value_length(col), 1).fill_null(False)), path, "turn-shape",
               lambda i, s=side, c=col: f"{s} is not exactly one turn: {c[i].as_py()!r:.120}")
        role = pc.struct_field(pc.list_flatten(col), "role")      # one turn per row from here on
        _first(~_np(pc.equal(role, "assistant").fill_null(False)), path, "turn-shape",
               lambda i, s=side, r=role: f"{s} turn has role {r[i].as_py()!r}, expected 'assistant'")
    pid = table.column(PROMPT_ID)
    _first(~_np(pc.greater(pc.utf8_length(pid), 0).fill_null(False)), path, "empty-prompt-id",
           lambda i: f"prompt_id is {pid[i].as_py()!r}")
    texts = [pc.struct_field(pc.list_element(table.column(s), 0), "content") for s in (CHOSEN, REJECTED)]
    _first(_np(pc.equal(*texts).fill_null(True)), path, "identical-texts",
           lambda i: f"chosen and rejected are both {texts[0][i].as_py()!r:.80}")
    rc, rr = _np(table.column(CHOSEN_REWARD)), _np(table.column(REJECTED_REWARD))
    with np.errstate(invalid="ignore"):
        _first(~(rc > rr), path, "not-better", lambda i: f"chosen_reward {rc[i]} <= rejected_reward {rr[i]}")
    keys = zip(pid.to_pylist(), table.column(CHOSEN_INDEX).to_pylist(), table.column(REJECTED_INDEX).to_pylist(),
               strict=True)
    dup = np.zeros(table.num_rows, dtype=bool)
    for i, key in enumerate(keys):
        dup[i] = key in seen
        seen.add(key)
    _first(dup, path, "duplicate-pair", lambda i: "(prompt_id, chosen_index, rejected_index) repeats an earlier row")
    if rule is not None:
        tau, eta = rule
        is_rs = _np(pc.equal(table.column(STRATEGY), str(Strategy.RS_DPO)).fill_null(False))
        with np.errstate(over="ignore", invalid="ignore"):
            accepted = rules.sigmoid((rc - rr) / tau) > eta
        _first(is_rs & ~accepted, path, "rs-dpo-rule",
               lambda i: f"sigmoid(({rc[i]} - {rr[i]}) / {tau}) = {rules.sigmoid((rc[i] - rr[i]) / tau)} "
                         f"is not > eta = {eta} (manifest.json)")


def _check_scored(path: str, table: pa.Table, seen: set) -> None:
    pid = table.column(PROMPT_ID)
    ids = pid.to_pylist()
    _first(np.array([not p for p in ids], dtype=bool), path, "empty-prompt-id", lambda i: f"prompt_id is {ids[i]!r}")
    dup = np.zeros(len(ids), dtype=bool)
    for i, p in enumerate(ids):
        dup[i] = p in seen
        seen.add(p)
    _first(dup, path, "duplicate-prompt-id", lambda i: f"prompt_id {ids[i]!r} appears earlier in this folder")
    clean = ~_np(table.column(ERROR).is_valid())
    lens = [_np(pc.list_value_length(table.column(c)).fill_null(0)) for c in (RESPONSES, REWARDS, FINISH_REASONS)]
    _first(clean & ((lens[0] != lens[1]) | (lens[0] != lens[2])), path, "length-mismatch",
           lambda i: f"{lens[0][i]} responses, {lens[1][i]} rewards, {lens[2][i]} finish_reasons (error is null)")
    rewards = table.column(REWARDS).combine_chunks()
    values = _np(pc.list_flatten(rewards))
    parent = _np(pc.list_parent_indices(rewards)).astype(np.int64)
    finite = np.isfinite(values)
    bad_rows = np.zeros(table.num_rows, dtype=bool)
    bad_rows[parent[~finite]] = True
    _first(clean & bad_rows, path, "non-finite-reward",
           lambda i: f"rewards {table.column(REWARDS)[i].as_py()} but error is null")
    n = table.num_rows
    count = np.bincount(parent, minlength=n)
    mean = np.bincount(parent, values, minlength=n) / np.maximum(count, 1)
    std = np.sqrt(np.bincount(parent, (values - mean[parent]) ** 2, minlength=n) / np.maximum(count, 1))
    low, high = np.full(n, np.inf), np.full(n, -np.inf)
    with np.errstate(invalid="ignore"):                # NaN rewards of error rows: not checked below
        np.minimum.at(low, parent, values)
        np.maximum.at(high, parent, values)
    check = clean & (count > 0)
    for name, want in ((REWARD_MEAN, mean), (REWARD_STD, std), (REWARD_MIN, low), (REWARD_MAX, high)):
        got = _np(table.column(name).fill_null(np.nan))
        _first(check & ~np.isclose(got, want, rtol=1e-6, atol=1e-9), path, "stats-mismatch",
               lambda i, name=name, got=got, want=want: f"{name} = {got[i]} but the rewards give {want[i]}")


def validate(source: str | Path) -> tuple[bool, str]:
    """(True, one-line summary) or (False, 'FILE: row I: CLASS: detail') for the first violation found."""
    source = str(source)
    try:
        paths = list_shards(source)
    except FileNotFoundError as e:
        return False, f"{source}: {e}"
    if not paths:
        return False, f"{source}: no .parquet shards"
    fs, first = storage.filesystem(paths[0])
    names = set(pq.read_schema(first, filesystem=fs).names)
    if set(PAIRS_SCHEMA.names) <= names:
        kind, schema = "pairs", PAIRS_SCHEMA
    elif set(SCORED_SCHEMA.names) <= names:
        kind, schema = "scored", SCORED_SCHEMA
    else:
        return False, (f"{paths[0]}: schema: neither a pairs nor a scored shard (columns {sorted(names)}); "
                       f"missing pairs columns {sorted(set(PAIRS_SCHEMA.names) - names)}")
    manifest = read_manifest(sidecar_dir(source)) or {}
    config = manifest.get("config") or {}
    config = config.get("pairing", config)          # the cluster pipeline nests it under "pairing"
    rule = (float(config["tau"]), float(config["eta"])) if "tau" in config and "eta" in config else None
    seen: set = set()
    rows = 0
    try:
        for path in paths:
            try:
                table = read_shard(path, schema)
            except ShardError as e:
                return False, f"{path}: schema: {e}"
            rows += table.num_rows
            if kind == "pairs":
                _check_pairs(path, table, seen, rule)
            else:
                _check_scored(path, table, seen)
    except Violation as v:
        return False, str(v)
    note = ""
    if kind == "pairs":
        note = (f", rs-dpo rule checked at tau={rule[0]}, eta={rule[1]}" if rule
                else ", rs-dpo rule not checked (no tau/eta in manifest.json)")
    return True, f"ok: {source}: {len(paths)} {kind} shard(s), {rows} rows, no violations{note}"
