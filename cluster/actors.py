"""The Ray Data stages of the data job: the sampler and scorer actors (each wraps a plain stage
callable, loaded once per actor) and the commit task that pairs a shard and writes it.

A shard's rows carry bookkeeping columns (which shard, how many rows, timings) through the actors;
they are never written to shards.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import ray

from common.shards import conform, shard_path, write_shard
from generation.config import SamplerConfig
from generation.schema import ERROR, NUM_TOKENS, RESPONSES
from pairing.card import write_pairs_shard
from pairing.config import PairingConfig
from pairing.pairs import make_pairs
from pairing.rules import stable_key
from pairing.truncation import load_tokenizer
from rewarding.config import ScorerConfig
from rewarding.schema import REWARD_TRUNCATED, SCORED_SCHEMA

# Bookkeeping columns that travel with each row through the actors; never written to shards.
SHARD = "_shard"
SHARD_ROWS = "_shard_rows"
T_SAMPLE = "_t_sample"
T_SCORE = "_t_score"
ENGINE_BUSY = "_engine_busy"   # the sampler actor's engine-step seconds so far (cumulative)
SAMPLER_ID = "_sampler_id"     # which sampler actor: busy seconds add up per actor
META = [SHARD, SHARD_ROWS]
SAMPLER_META = [T_SAMPLE, ENGINE_BUSY, SAMPLER_ID]

def _with_meta(out: pa.Table, batch: pa.Table, extra: dict[str, float | str]) -> pa.Table:
    for name in [*META, *SAMPLER_META]:
        if name in batch.column_names:
            out = out.append_column(name, batch.column(name))
    for name, value in extra.items():
        out = out.append_column(name, pa.array([value] * out.num_rows))
    return out


class SamplerActor:
    """Ray Data actor around generation.Sampler: loads vLLM once per actor. Ray Data calls it from
    `shards_in_flight` threads at once; the Sampler's engine loop batches their requests together."""

    def __init__(self, config: dict, shards_in_flight: int = 1):
        from generation.sampler import Sampler

        self.sampler = Sampler(SamplerConfig.model_validate(config), shards_in_flight=shards_in_flight)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from generation.sampler import EngineFailed

        t0 = time.perf_counter()
        try:
            out = self.sampler(batch.drop_columns(META))
        except EngineFailed as e:
            # A dead engine does not come back inside this process: exit, so Ray restarts the actor
            # (a fresh engine) and retries its shards, up to resources.max_actor_restarts times.
            print(f"[rsdpo] sampler actor exiting for a restart: {e}", file=sys.stderr, flush=True)
            os._exit(1)
        # With shards in flight this is the shard's latency (queueing included), not engine time;
        # the engine's busy seconds travel separately.
        return _with_meta(out, batch, {T_SAMPLE: time.perf_counter() - t0,
                                       ENGINE_BUSY: self.sampler.loop.busy_s,
                                       SAMPLER_ID: ray.get_runtime_context().get_actor_id() or str(os.getpid())})


class ScorerActor:
    """Ray Data actor around rewarding.Scorer: loads the reward model once per actor."""

    def __init__(self, config: dict):
        from rewarding.scorer import Scorer

        self.scorer = Scorer(ScorerConfig.model_validate(config))

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        out = self.scorer(batch.drop_columns([*META, *SAMPLER_META]))
        return _with_meta(out, batch, {T_SCORE: time.perf_counter() - t0})


_tokenizer = functools.lru_cache(maxsize=2)(load_tokenizer)  # one load per worker process, not per shard


def commit_shard(batch: pa.Table, out_dir: str, pairing: dict) -> pa.Table:
    """Pair each complete shard in the batch, then write pairs and scored shards (scored last:
    it is the commit marker). Returns one summary row per shard for the driver."""
    out = Path(out_dir)
    pcfg = PairingConfig.model_validate(pairing)
    summaries = []
    for shard in sorted(set(batch.column(SHARD).to_pylist())):
        mask = pa.compute.equal(batch.column(SHARD), shard)
        part = batch.filter(mask)
        expected = part.column(SHARD_ROWS)[0].as_py()
        if part.num_rows != expected:
            # Ray Data split a shard's block; committing part of it would lose prompts on resume.
            raise RuntimeError(f"shard {shard} arrived with {part.num_rows} of {expected} rows")
        scored = conform(part, SCORED_SCHEMA, f"shard {shard}")
        t0 = time.perf_counter()
        tokenizer = _tokenizer(pcfg.tokenizer) if pcfg.tokenizer and pcfg.max_length else None
        result = make_pairs(scored, pcfg, shuffle_seed=stable_key(pcfg.seed, shard), tokenizer=tokenizer)
        t_pair = time.perf_counter() - t0
        write_pairs_shard(result, shard_path(out / "pairs", shard))
        write_shard(scored, shard_path(out / "scored", shard), SCORED_SCHEMA)
        errors = scored.column(ERROR).to_pylist()
        summaries.append({
            "shard": shard, "prompts": scored.num_rows, "row_errors": sum(e is not None for e in errors),
            "pairs": result.pairs.num_rows, "prompts_with_pairs": result.stats["prompts_with_pairs"],
            "responses": sum(len(r) for r in scored.column(RESPONSES).to_pylist()),
            "reward_truncated": sum(scored.column(REWARD_TRUNCATED).to_pylist()),
            "output_tokens": sum(sum(t) for t in scored.column(NUM_TOKENS).to_pylist()),
            "t_sample": part.column(T_SAMPLE)[0].as_py(), "t_score": part.column(T_SCORE)[0].as_py(),
            "engine_busy": part.column(ENGINE_BUSY)[0].as_py(), "sampler_id": part.column(SAMPLER_ID)[0].as_py(),
            "t_pair": t_pair, "committed_at": time.time(),
        })
    return pa.Table.from_pylist(summaries)
