"""The Ray Data stages of the data job: the streaming source that reads each shard's prompts, the
sampler and scorer actors (each wraps a plain stage callable, loaded once per actor) and the
commit task that pairs a shard and writes it.

A shard travels through the job as ONE row: its table as Arrow IPC bytes (PAYLOAD) beside its name
and timings. Ray Data cuts a task's output into blocks of at most DataContext.target_max_block_size
bytes, but only between rows, so a shard can never reach the commit in pieces (a shard split across
two commit calls could only be refused, and was, on every retry). The bookkeeping columns are never
written to shards.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterator

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from cluster.plan import SHARD_META
from generation.config import GenerationConfig, PromptsConfig
from generation.prompts import read_prompts
from generation.schema import ERROR, NUM_TOKENS, PROMPT_ID, RESPONSES
from pairing.card import write_pairs_shard
from pairing.config import PairingConfig
from pairing.pairs import make_pairs
from pairing.rules import stable_key
from pairing.truncation import load_tokenizer
from rewarding.config import RewardingConfig
from rewarding.schema import REWARD_MAX, REWARD_MIN, REWARD_TRUNCATED, REWARDS, SCORED_SCHEMA
from rsdpo import storage
from rsdpo.shards import conform, shard_path, write_shard
from rsdpo.storage import StorageConfig

# Columns of a shard's row; never written to shards.
SHARD = "_shard"
PAYLOAD = "_payload"           # the shard's table at this stage, as Arrow IPC stream bytes
SHARD_DIGEST = "_shard_digest"  # the plan's digest of the shard's prompts; the commit writes it in the footer
T_READ = "_t_read"              # wall clock (time.time()) when the shard's prompts were read
T_SAMPLE_START = "_t_sample_start"
T_SAMPLE = "_t_sample"          # seconds
T_SCORE_START = "_t_score_start"
T_SCORE = "_t_score"            # seconds
ENGINE_BUSY = "_engine_busy"   # the sampler actor's engine-step seconds so far (cumulative)
ENGINE_ADMIT = "_engine_admit"  # ... and its seconds adding requests to the engine (cumulative)
SAMPLER_ID = "_sampler_id"     # which sampler actor: busy seconds add up per actor
SAMPLER_NODE = "_sampler_node"  # the Ray node id the shard was sampled on (placement, in the manifest)
SAMPLER_READY = "_sampler_ready"  # wall clock when the actor's engine had loaded
SCORER_ID = "_scorer_id"
SCORER_NODE = "_scorer_node"    # ... and the one it was scored on
SCORER_READY = "_scorer_ready"


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


def _actor_id() -> str:
    return ray.get_runtime_context().get_actor_id() or str(os.getpid())


def _read_shard(prompts: PromptsConfig, files: list[str], storage_config: StorageConfig, name: str, digest: str,
                rows: pa.Table) -> list[pa.Table]:
    storage.configure(storage_config)
    return [pack(read_prompts(prompts, files, rows), {SHARD: name, SHARD_DIGEST: digest, T_READ: time.time()})]


class ShardSource(Datasource):
    """The job's Ray Data source: one read task per shard, holding only the shard's index rows (ids,
    digests, locators); the task reads the prompts' text from the source when Ray Data schedules
    it, so the streaming executor's backpressure, not the driver, decides how many shards are in
    memory. `shards` is [(name, digest, index rows)]; `files` the index's prompt files."""

    BYTES_PER_PROMPT = 2048  # Ray Data's size estimate only; the text is not read until a task runs

    def __init__(self, prompts: PromptsConfig, files: list[str], storage_config: StorageConfig,
                 shards: list[tuple[str, str, pa.Table]]):
        super().__init__()
        self.prompts, self.files, self.storage_config, self.shards = prompts, files, storage_config, shards

    def estimate_inmemory_data_size(self) -> int:
        return sum(rows.num_rows for _, _, rows in self.shards) * self.BYTES_PER_PROMPT

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # One task per shard whatever the parallelism asked: the shard is the unit of commit.
        tasks = []
        for name, digest, rows in self.shards:
            read = functools.partial(_read_shard, self.prompts, self.files, self.storage_config, name, digest, rows)
            tasks.append(ReadTask(read, BlockMetadata(num_rows=1, size_bytes=rows.num_rows * self.BYTES_PER_PROMPT,
                                                      exec_stats=None)))
        return tasks


class SamplerActor:
    """Ray Data actor around generation.Sampler: loads vLLM once per actor. Ray Data calls it from
    `shards_in_flight` threads at once; the Sampler's engine loop batches their requests together."""

    def __init__(self, config: dict, shards_in_flight: int = 1):
        from generation.sampler import Sampler

        self.sampler = Sampler(GenerationConfig.model_validate(config), shards_in_flight=shards_in_flight)
        self.actor_id, self.node_id = _actor_id(), ray.get_runtime_context().get_node_id()
        self.ready_at = time.time()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from generation.sampler import EngineFailed

        rows = []
        for meta, table in unpack(batch):
            start, t0 = time.time(), time.perf_counter()
            try:
                out = self.sampler(table)
            except EngineFailed as e:
                # A dead engine does not come back inside this process: exit, so Ray restarts the actor
                # (a fresh engine) and retries its shards, up to resources.max_actor_restarts times.
                print(f"[rsdpo] sampler actor exiting for a restart: {e}", file=sys.stderr, flush=True)
                os._exit(1)
            # With shards in flight this is the shard's latency (queueing included), not engine time;
            # the engine's busy seconds travel separately.
            rows.append(pack(out, meta | {T_SAMPLE_START: start, T_SAMPLE: time.perf_counter() - t0,
                                          ENGINE_BUSY: self.sampler.loop.busy_s,
                                          ENGINE_ADMIT: self.sampler.loop.admit_s, SAMPLER_ID: self.actor_id,
                                          SAMPLER_NODE: self.node_id, SAMPLER_READY: self.ready_at}))
        return pa.concat_tables(rows)


class ScorerActor:
    """Ray Data actor around rewarding.Scorer: loads the reward model once per actor."""

    def __init__(self, config: dict):
        from rewarding.scorer import Scorer

        self.scorer = Scorer(RewardingConfig.model_validate(config))
        self.actor_id, self.node_id = _actor_id(), ray.get_runtime_context().get_node_id()
        self.ready_at = time.time()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for meta, table in unpack(batch):
            start, t0 = time.time(), time.perf_counter()
            out = self.scorer(table)
            rows.append(pack(out, meta | {T_SCORE_START: start, T_SCORE: time.perf_counter() - t0,
                                          SCORER_ID: self.actor_id, SCORER_NODE: self.node_id,
                                          SCORER_READY: self.ready_at}))
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
        start, t0 = time.time(), time.perf_counter()
        tokenizer = _tokenizer(pcfg.tokenizer) if pcfg.tokenizer and pcfg.max_length else None
        result = make_pairs(scored, pcfg, shuffle_seed=stable_key(pcfg.seed, shard), tokenizer=tokenizer)
        t_pair = time.perf_counter() - t0
        errors = scored.column(ERROR).to_pylist()
        ids, lo, hi = (scored.column(c).to_pylist() for c in (PROMPT_ID, REWARD_MIN, REWARD_MAX))
        footer = {
            "shard": shard, "digest": meta[SHARD_DIGEST], "prompts": scored.num_rows,
            "row_errors": sum(e is not None for e in errors), "pairs": result.pairs.num_rows,
            "prompts_with_pairs": result.stats["prompts_with_pairs"],
            "error_rows": [[pid, e] for pid, e in zip(ids, errors, strict=True) if e is not None],
            # per usable prompt: max - min reward (the coverage warning's quantiles)
            "spreads": [h - low for e, low, h in zip(errors, lo, hi, strict=True) if e is None and low is not None],
            "responses": sum(len(r) for r in scored.column(REWARDS).to_pylist()),
            "reward_truncated": sum(scored.column(REWARD_TRUNCATED).to_pylist()),
        }
        write_pairs_shard(result, shard_path(storage.join(out_dir, "pairs"), shard))
        write_shard(scored, shard_path(storage.join(out_dir, "scored"), shard),
                    SCORED_SCHEMA.with_metadata({SHARD_META: json.dumps(footer).encode()}))
        summaries.append({
            "shard": shard, "prompts": scored.num_rows, "row_errors": footer["row_errors"],
            "pairs": result.pairs.num_rows, "prompts_with_pairs": footer["prompts_with_pairs"],
            "responses": sum(len(r) for r in scored.column(RESPONSES).to_pylist()),
            "reward_truncated": footer["reward_truncated"],
            "output_tokens": sum(sum(t) for t in scored.column(NUM_TOKENS).to_pylist()),
            "t_read": meta[T_READ], "t_sample_start": meta[T_SAMPLE_START], "t_sample": meta[T_SAMPLE],
            "t_score_start": meta[T_SCORE_START], "t_score": meta[T_SCORE], "engine_busy": meta[ENGINE_BUSY],
            "engine_admit": meta[ENGINE_ADMIT],
            "sampler_id": meta[SAMPLER_ID], "scorer_id": meta[SCORER_ID], "sampler_node": meta[SAMPLER_NODE],
            "scorer_node": meta[SCORER_NODE], "sampler_ready": meta[SAMPLER_READY],
            "scorer_ready": meta[SCORER_READY], "t_pair": t_pair, "commit_start": start, "committed_at": time.time(),
            "writer_pid": os.getpid(),
        })
    return pa.Table.from_pylist(summaries)
