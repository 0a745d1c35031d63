"""The Ray Data stages of the data job: the sampler and scorer actors (each wraps a plain stage
callable, loaded once per actor) and the commit task that pairs a shard and writes it.

A shard travels through the job as ONE row: its table as Arrow IPC bytes (PAYLOAD) beside its name
and timings. Ray Data cuts a task's output into blocks of at most DataContext.target_max_block_size
bytes, but only between rows, so a shard can never reach the commit in pieces (a shard split across
two commit calls could only be refused, and was, on every retry). The bookkeeping columns are never
written to shards.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator

import pyarrow as pa
import ray

from generation.config import GenerationConfig
from generation.schema import ERROR, NUM_TOKENS, RESPONSES
from pairing.card import write_pairs_shard
from pairing.config import PairingConfig
from pairing.pairs import make_pairs
from pairing.rules import stable_key
from pairing.truncation import load_tokenizer
from rewarding.config import RewardingConfig
from rewarding.schema import REWARD_TRUNCATED, SCORED_SCHEMA
from rsdpo import storage
from rsdpo.shards import conform, shard_path, write_shard
from rsdpo.storage import StorageConfig

# Columns of a shard's row; never written to shards.
SHARD = "_shard"
PAYLOAD = "_payload"           # the shard's table at this stage, as Arrow IPC stream bytes
T_SAMPLE = "_t_sample"
T_SCORE = "_t_score"
ENGINE_BUSY = "_engine_busy"   # the sampler actor's engine-step seconds so far (cumulative)
SAMPLER_ID = "_sampler_id"     # which sampler actor: busy seconds add up per actor
SAMPLER_NODE = "_sampler_node"  # the Ray node id the shard was sampled on (placement, in the manifest)
SCORER_NODE = "_scorer_node"    # ... and scored on


def pack(table: pa.Table, meta: dict[str, str | float]) -> pa.Table:
    """One row: the shard's `table` as IPC bytes, plus its bookkeeping values (`meta`, SHARD first)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.table({**{k: [v] for k, v in meta.items()},
                     PAYLOAD: pa.array([sink.getvalue().to_pybytes()], pa.large_binary())})


def unpack(batch: pa.Table) -> Iterator[tuple[dict[str, str | float], pa.Table]]:
    """(bookkeeping values, table) for each shard row in a batch (one, unless Ray Data joined blocks)."""
    payloads = batch.column(PAYLOAD)
    for i, meta in enumerate(batch.drop_columns([PAYLOAD]).to_pylist()):
        yield meta, pa.ipc.open_stream(payloads[i].as_buffer()).read_all()  # zero-copy view of the bytes


class SamplerActor:
    """Ray Data actor around generation.Sampler: loads vLLM once per actor. Ray Data calls it from
    `shards_in_flight` threads at once; the Sampler's engine loop batches their requests together."""

    def __init__(self, config: dict, shards_in_flight: int = 1):
        from generation.sampler import Sampler

        self.sampler = Sampler(GenerationConfig.model_validate(config), shards_in_flight=shards_in_flight)
        ctx = ray.get_runtime_context()
        self.actor_id = ctx.get_actor_id() or str(os.getpid())
        self.node_id = ctx.get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from generation.sampler import EngineFailed

        rows = []
        for meta, table in unpack(batch):
            t0 = time.perf_counter()
            try:
                out = self.sampler(table)
            except EngineFailed as e:
                # A dead engine does not come back inside this process: exit, so Ray restarts the actor
                # (a fresh engine) and retries its shards, up to resources.max_actor_restarts times.
                print(f"[rsdpo] sampler actor exiting for a restart: {e}", file=sys.stderr, flush=True)
                os._exit(1)
            # With shards in flight this is the shard's latency (queueing included), not engine time;
            # the engine's busy seconds travel separately.
            rows.append(pack(out, meta | {T_SAMPLE: time.perf_counter() - t0, ENGINE_BUSY: self.sampler.loop.busy_s,
                                          SAMPLER_ID: self.actor_id, SAMPLER_NODE: self.node_id}))
        return pa.concat_tables(rows)


class ScorerActor:
    """Ray Data actor around rewarding.Scorer: loads the reward model once per actor."""

    def __init__(self, config: dict):
        from rewarding.scorer import Scorer

        self.scorer = Scorer(RewardingConfig.model_validate(config))
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for meta, table in unpack(batch):
            t0 = time.perf_counter()
            out = self.scorer(table)
            rows.append(pack(out, meta | {T_SCORE: time.perf_counter() - t0, SCORER_NODE: self.node_id}))
        return pa.concat_tables(rows)


_tokenizer = functools.lru_cache(maxsize=2)(load_tokenizer)  # one load per worker process, not per shard


def commit_shard(batch: pa.Table, out_dir: str, pairing: dict, storage_config: StorageConfig) -> pa.Table:
    """Pair each shard in the batch, then write its pairs and scored shards (scored last: it is the
    commit marker). Returns one summary row per shard for the driver."""
    storage.configure(storage_config)
    pcfg = PairingConfig.model_validate(pairing)
    summaries = []
    for meta, table in unpack(batch):
        shard = meta[SHARD]
        scored = conform(table, SCORED_SCHEMA, f"shard {shard}")
        t0 = time.perf_counter()
        tokenizer = _tokenizer(pcfg.tokenizer) if pcfg.tokenizer and pcfg.max_length else None
        result = make_pairs(scored, pcfg, shuffle_seed=stable_key(pcfg.seed, shard), tokenizer=tokenizer)
        t_pair = time.perf_counter() - t0
        write_pairs_shard(result, shard_path(storage.join(out_dir, "pairs"), shard))
        write_shard(scored, shard_path(storage.join(out_dir, "scored"), shard), SCORED_SCHEMA)
        errors = scored.column(ERROR).to_pylist()
        summaries.append({
            "shard": shard, "prompts": scored.num_rows, "row_errors": sum(e is not None for e in errors),
            "pairs": result.pairs.num_rows, "prompts_with_pairs": result.stats["prompts_with_pairs"],
            "responses": sum(len(r) for r in scored.column(RESPONSES).to_pylist()),
            "reward_truncated": sum(scored.column(REWARD_TRUNCATED).to_pylist()),
            "output_tokens": sum(sum(t) for t in scored.column(NUM_TOKENS).to_pylist()),
            "t_sample": meta[T_SAMPLE], "t_score": meta[T_SCORE], "engine_busy": meta[ENGINE_BUSY],
            "sampler_id": meta[SAMPLER_ID], "sampler_node": meta[SAMPLER_NODE], "scorer_node": meta[SCORER_NODE],
            "t_pair": t_pair, "committed_at": time.time(),
        })
    return pa.Table.from_pylist(summaries)
