"""The RS-DPO data job as one streaming Ray Data pipeline.

    prompt index (driver: scan and validate the source, quarantine, seeded shuffle, cut into shards;
                  ids, digests and locators only, never the text)
      -> read_datasource(ShardSource)  one read task per shard reads its prompts' text
      -> map_batches(SamplerActor)  actor pool of vLLM engines, one shard per batch
      -> map_batches(ScorerActor)   actor pool of reward models
      -> map_batches(commit_shard)  tasks: pair (pure), write pairs shard, write scored shard
      => OUT/scored/data/shard-NNNNN.parquet, OUT/pairs/data/shard-NNNNN.parquet, manifests, cards

A shard (`shard_size` prompts) is the unit of streaming, commit and resume: each writer writes
the pairs shard then the scored shard, each atomically (rsdpo/storage.py: temp + fsync + rename on
a file system, one upload of the finished object on an object store); the scored shard is the
commit marker. OUT may be a local path, a shared file system or an s3:// / gs:// prefix. A re-run
with the same config skips committed shards. Seeds derive from (run seed, prompt_id), so the
content of a shard does not depend on which actor took it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import ray

from cluster import timeline
from cluster.actors import SamplerActor, ScorerActor, ShardSource, commit_shard
from cluster.config import RunConfig
from cluster.plan import Shard, check_resume, clear_temps, committed, plan_shards, shard_footer
from cluster.session import WORKER_ENV, connect, object_store_used_bytes, scorer_env
from generation.prompts import PromptIndex, check_usable, scan_prompts
from generation.quarantine import write_quarantine
from pairing.card import UPSTREAM_SECTIONS, write_pairs_meta
from pairing.pairs import coverage_warning
from pairing.rules import raw_threshold
from rewarding.scorer import truncation_warning
from rsdpo import storage
from rsdpo.assets import model_identity, resolve_model
from rsdpo.manifest import write_manifest
from rsdpo.shards import hub_configs

log = logging.getLogger("rsdpo")
# Ray 2.60 deprecates map_batches' **ray_remote_args but gives actor restarts and task retries no
# named parameter (its actor pool reads max_restarts / max_task_retries from them): they stay the only
# way to bound a crashing actor's retries below, so that warning, raised at this module's calls, is known.
warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning,
                        module=__name__)
# When stdout is not a terminal (a log file, CI, `ray job logs`) Ray Data logs every operator's state,
# a dozen lines, every 10 s; the job prints a line per committed shard with its rate and ETA. Every
# 5 minutes is enough for what Ray Data's block adds (backpressure, actor states). An operator's own
# setting wins. Read by Ray Data when the execution starts, in this (the driver's) process.
os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "300")


OBJECT_STORE_POLL_S = 5.0


class ErrorRateExceeded(RuntimeError):
    pass


class NodeLost(RuntimeError):
    """A Ray node died under the job and Ray Data gave up on the work it held; the message names it."""


# What Ray raises to the driver when a node vanishes with an actor or the blocks it held.
NODE_LOSS_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError)


def lost_nodes(alive_before: set[str], wait_s: float = 40.0) -> list[dict]:
    """Nodes alive when the job started and dead now. An actor's RPCs fail as soon as its node goes,
    but the GCS marks the node dead only once its health checks fail (about 15 s by default), so
    wait up to `wait_s` for that."""
    deadline = time.monotonic() + wait_s
    while True:
        gone = [n for n in ray.nodes() if n["NodeID"] in alive_before and not n["Alive"]]
        if gone or time.monotonic() > deadline:
            return gone
        time.sleep(1)


# Ray Data's block prefetcher thread parks on a condition until fed, and is stopped only when an
# iteration runs to its end; after an early stop nothing feeds it, so it is not waited for.
PARKED_RAY_DATA_THREADS = frozenset({"Prefetcher"})


def end_iteration(rows, threads_before: set[threading.Thread], timeout: float = 30.0) -> list[threading.Thread]:
    """End a Ray Data iteration the driver left early, and wait for the threads it started.

    Closing the iterator shuts Ray Data's executor down, but its fetch threads are still calling
    into Ray while they unwind. Ending the Ray session under them makes Ray quit the process
    with status 1 ("The core worker has already been shutdown"), and the job's own error and
    exit status are lost. Returns the threads still alive at the deadline (none, normally)."""
    rows.close()
    deadline = time.monotonic() + timeout
    new = [t for t in threading.enumerate()
           if t not in threads_before and t is not threading.current_thread() and t.name not in PARKED_RAY_DATA_THREADS]
    for t in new:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in new if t.is_alive()]
    if alive:
        log.warning("Ray Data threads still running after %.0fs: %s", timeout, [t.name for t in alive])
    return alive


def _totals(out: str) -> dict:
    """Counts over every committed shard (this session's and earlier ones), from the footers the
    commit wrote (cluster.plan.SHARD_META): no shard's rows are read."""
    rows = errors = pairs = with_pairs = responses = truncated = 0
    error_rows, spreads = [], []  # spreads: per usable prompt, max - min reward (coverage warning)
    shards = committed(out, "scored")
    for path in shards:
        f = shard_footer(path)
        rows += f["prompts"]
        errors += f["row_errors"]
        pairs += f["pairs"]
        with_pairs += f["prompts_with_pairs"]
        responses += f["responses"]
        truncated += f["reward_truncated"]
        error_rows += [{"prompt_id": pid, "error": err, "shard": storage.basename(path)} for pid, err in f["error_rows"]]
        spreads += f["spreads"]
    return {"rows": rows, "row_errors": errors, "pairs": pairs, "prompts_with_pairs": with_pairs,
            "error_rows": error_rows, "spreads": np.asarray(spreads, dtype=np.float64),
            "responses": responses, "reward_truncated": truncated, "shards": len(shards)}


@dataclass
class RunState:
    """What one invocation of the job knows when it finishes: its inputs, the plan, and the summary
    row of every shard this invocation committed (earlier invocations' shards are read back)."""

    cfg: RunConfig
    index: PromptIndex
    plan: list[Shard]
    models: dict
    t_start: float
    address: str | None = None
    committed: list[dict] = field(default_factory=list)
    object_store_peak: int = 0  # bytes, sampled at commits (OBJECT_STORE_POLL_S apart)


def build_dataset(cfg: RunConfig, index: PromptIndex, todo: list[Shard]) -> ray.data.Dataset:
    """The streaming job over the shards still to run: shard reads -> sampler pool -> scorer pool
    -> commit tasks; a shard is one row (cluster/actors.py), one block and one batch."""
    out, r = cfg.out, cfg.resources
    source = ShardSource(cfg.prompts, index.files, cfg.storage,
                         [(s.name, s.digest, index.table.take(s.rows)) for s in todo])
    # A read task is I/O, light as a commit: with the default 1 CPU it waited forever beside a sampler
    # (1 CPU) and a scorer (0.5) on 2 CPUs. One block per shard: Ray Data must not split them.
    ds = ray.data.read_datasource(source, override_num_blocks=len(todo), num_cpus=r.writer_num_cpus,
                                  ray_remote_args={"runtime_env": {"env_vars": WORKER_ENV}})
    # batch_size=1: one row, so one shard, per call. Ray Data refuses batch_size=None (the whole
    # block) for a stage that asks for GPUs ("You must provide `batch_size` to `map_batches` when
    # requesting GPUs"), and a row count over prompts would bundle small tail shards together.
    common = {"batch_size": 1, "batch_format": "pyarrow", "zero_copy_batch": True,
              "runtime_env": {"env_vars": WORKER_ENV}}
    # A dead actor (pre-emption, OOM kill, segfault) is restarted and its batch retried, a
    # bounded number of times, so a deterministic crash fails the job instead of looping.
    retry = {"max_restarts": r.max_actor_restarts, "max_task_retries": r.max_actor_restarts}
    # Several shards in flight per engine, each call on its own thread (see SamplerActor).
    in_flight = r.sampler_shards_in_flight
    sampler_pool = ray.data.ActorPoolStrategy(
        size=r.sampler_replicas, max_tasks_in_flight_per_actor=in_flight,
        max_concurrent_calls_per_actor=in_flight, enable_true_multi_threading=in_flight > 1)
    ds = ds.map_batches(SamplerActor, fn_constructor_kwargs={"config": cfg.generation.model_dump(mode="json"),
                                                             "shards_in_flight": in_flight},
                        compute=sampler_pool, num_cpus=r.sampler_num_cpus, num_gpus=r.sampler_num_gpus,
                        resources=r.sampler_resources or None, **retry, **common)
    ds = ds.map_batches(ScorerActor, fn_constructor_kwargs={"config": cfg.rewarding.model_dump(mode="json")},
                        compute=ray.data.ActorPoolStrategy(size=r.scorer_replicas),
                        num_cpus=r.scorer_num_cpus, num_gpus=r.scorer_num_gpus, resources=r.scorer_resources or None,
                        **retry, **common | {"runtime_env": {"env_vars": scorer_env(r.scorer_num_cpus)}})
    # the storage section travels as the model (keys included) in the task's arguments, never in an
    # environment variable or a log line
    return ds.map_batches(commit_shard, fn_kwargs={"out_dir": out, "pairing": cfg.pairing.model_dump(mode="json"),
                                                   "storage_config": cfg.storage},
                          num_cpus=r.writer_num_cpus, max_retries=r.max_actor_restarts, **common)


def run_pipeline(cfg: RunConfig, *, fresh: bool = False) -> dict:
    """Run (or resume) the job; returns the run manifest."""
    t_start = time.time()
    out = cfg.out
    storage.configure(cfg.storage)
    index = scan_prompts(cfg.prompts)
    if index.table.num_rows == 0:
        check_usable(index, cfg.prompts, write_quarantine(out, index.rejects))  # the reasons first, then stop
    plan = plan_shards(index.table, cfg)
    policy_path = resolve_model(cfg.generation.model)
    reward_path = resolve_model(cfg.rewarding.model)
    models = {"policy": model_identity(policy_path), "reward": model_identity(reward_path)}
    done = check_resume(cfg, plan, fresh, models)
    # after the resume check: a refused run leaves the earlier run's quarantine as it was
    if (quarantine := write_quarantine(out, index.rejects)) is not None:
        print(f"[rsdpo] {len(index.rejects)} prompt row(s) quarantined -> {quarantine}", flush=True)
    todo = [s for s in plan if s.name not in done]
    print(f"[rsdpo] {index.table.num_rows} prompts in {len(plan)} shards; {len(done)} already committed, "
          f"{len(todo)} to run -> {out}", flush=True)

    state = RunState(cfg=cfg, index=index, plan=plan, models=models, t_start=t_start)
    if todo:
        state.address = connect(cfg.resources.num_cpus)
        ds = build_dataset(cfg, index, todo)
        t0 = time.time()
        n_prompts = sum(len(s.rows) for s in todo)
        seen = errors = 0
        threads_before = set(threading.enumerate())
        alive_before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        polled = 0.0  # when the object store was last sampled
        rows = iter(ds.iter_rows())
        try:
            for row in rows:
                state.committed.append(row)
                if time.time() - polled > OBJECT_STORE_POLL_S:  # a gRPC round trip: not on every commit
                    polled, used = time.time(), object_store_used_bytes()
                    state.object_store_peak = max(state.object_store_peak, used or 0)
                seen += row["prompts"]
                errors += row["row_errors"]
                el = time.time() - t0
                eta = el / seen * (n_prompts - seen) if seen else float("nan")
                print(f"[rsdpo] committed {row['shard']}: {row['prompts']} prompts, {row['row_errors']} errors, "
                      f"{row['pairs']} pairs | {seen}/{n_prompts} prompts, {seen / el:.2f} prompts/s, "
                      f"ETA {eta:.0f}s", flush=True)
                if seen >= min(n_prompts, 2 * cfg.shard_size) and errors / seen > cfg.max_error_rate:
                    raise ErrorRateExceeded(
                        f"{errors} of {seen} prompts failed ({errors / seen:.0%} > max_error_rate "
                        f"{cfg.max_error_rate:.0%}); committed shards are kept in {out}. Inspect the `error` "
                        f"column of {storage.join(out, 'scored')} and fix the input or config, then re-run to resume.")
        except BaseException as e:
            # Stopped early (error rate, Ctrl-C, SIGTERM, a stage that gave up): end this job's tasks first,
            # since a writer killed mid-file leaves its temp file, then clear those, so the folders
            # hold committed shards only. A Ray session this process did not open is left running.
            end_iteration(rows, threads_before)
            gone = lost_nodes(alive_before) if isinstance(e, NODE_LOSS_ERRORS) else []
            if state.address != "existing":
                ray.shutdown()
            clear_temps(out)
            if gone:
                names = ", ".join(f"{n['NodeManagerAddress']} (node id {n['NodeID']})" for n in gone)
                raise NodeLost(
                    f"lost Ray node {names} while the job ran ({type(e).__name__}); the "
                    f"{len(done) + len(state.committed)} shards committed so far are kept in {out}. Submit the "
                    f"same command again: it runs only the shards still missing") from e
            raise
    return finish(state)


def _rates(session: list[dict], wall: float, t_start: float) -> dict:
    if not session:
        return {}
    s = {k: sum(row[k] for row in session) for k in ("prompts", "responses", "output_tokens", "pairs",
                                                     "t_sample", "t_score", "t_pair")}
    # engine seconds: each actor reports its running total, so the last (largest) one per actor
    engine: dict[str, float] = {}
    admit: dict[str, float] = {}
    engine_ready: dict[str, float] = {}
    for row in session:
        engine[row["sampler_id"]] = max(engine.get(row["sampler_id"], 0.0), row["engine_busy"])
        admit[row["sampler_id"]] = max(admit.get(row["sampler_id"], 0.0), row["engine_admit"])
        engine_ready[row["sampler_id"]] = row["sampler_ready"]
    s["t_engine"], s["t_admit"] = sum(engine.values()), sum(admit.values())
    busy = lambda n, t: round(n / t, 2) if t > 0 else None  # noqa: E731
    # the steady part of the job: from the moment the last actor had loaded to the last commit
    # (Ray start, engine and model loads excluded), what a bench compares with raw generation
    ready = max(max(row["sampler_ready"], row["scorer_ready"]) for row in session)
    last_commit = max(row["committed_at"] for row in session)
    steady = last_commit - ready
    # each engine's own time from its load to the last commit: an engine that loaded before the last
    # actor did was already working (a restarted one, later, had less time)
    engine_s = sum(last_commit - t for t in engine_ready.values())
    return {
        "wall_s": round(wall, 1),
        "actors_ready_s": round(ready - t_start, 2),
        # when each actor had loaded (its model), seconds after the job started
        "sampler_ready_s": sorted(round(t - t_start, 2) for t in engine_ready.values()),
        "scorer_ready_s": sorted(round(t - t_start, 2) for t in {row["scorer_id"]: row["scorer_ready"]
                                                                  for row in session}.values()),
        "first_commit_s": round(min(row["committed_at"] for row in session) - ready, 2),
        "steady_wall_s": round(steady, 2),
        # the share of its time (load to last commit) each engine spent inside vLLM: its steps, and
        # adding requests (vLLM's input processing, on the engine's thread); the rest it waited for the job
        "engine_busy_share": round((s["t_engine"] + s["t_admit"]) / engine_s, 3) if engine_s > 0 else None,
        "engine_step_share": round(s["t_engine"] / engine_s, 3) if engine_s > 0 else None,
        "prompts_per_s": round(s["prompts"] / wall, 3),
        "output_tokens_per_s": round(s["output_tokens"] / wall, 1),
        "responses_scored_per_s": round(s["responses"] / wall, 2),
        "pairs_per_s": round(s["pairs"] / wall, 2),
        # per-actor busy rates: what one replica of each stage sustains (size sampler:scorer from these)
        # (engine-step seconds summed over sampler actors; a shard's own latency overlaps others')
        "sampler_busy_output_tokens_per_s": busy(s["output_tokens"], s["t_engine"]),
        "sampler_busy_prompts_per_s": busy(s["prompts"], s["t_engine"]),
        "scorer_busy_responses_per_s": busy(s["responses"], s["t_score"]),
        "pairing_busy_prompts_per_s": busy(s["prompts"], s["t_pair"]),
        "shard_sample_latency_s": round(s["t_sample"] / len(session), 2),
        "busy_s": {"sample": round(s["t_engine"], 2), "admit": round(s["t_admit"], 2), "score": round(s["t_score"], 2),
                   "pair": round(s["t_pair"], 3)},
    }


def finish(state: RunState) -> dict:
    cfg, index, models = state.cfg, state.index, state.models
    out = cfg.out
    totals = _totals(out)
    wall = time.time() - state.t_start
    prompts_in = index.table.num_rows + len(index.rejects)
    counts = {
        "prompts_in": prompts_in,
        "rows_out": totals["rows"] - totals["row_errors"],
        "row_errors": totals["row_errors"],
        "quarantined": len(index.rejects),
        "shards": totals["shards"],
        "shards_planned": len(state.plan),
        "pairs": totals["pairs"],
        "prompts_with_pairs": totals["prompts_with_pairs"],
        "responses_truncated": totals["reward_truncated"],  # scored from a reward-model input cut to max_length
    }
    counts["balanced"] = counts["prompts_in"] == counts["rows_out"] + counts["row_errors"] + counts["quarantined"]
    config = cfg.model_dump(mode="json")
    warnings = []
    coverage = {"prompts_in": totals["rows"], "prompts_errored": totals["row_errors"],
                "prompts_with_pairs": totals["prompts_with_pairs"]}
    if (warning := coverage_warning(cfg.pairing, coverage, totals["spreads"])) is not None:
        warning += f". Re-pair without regenerating: python -m pairing --input {storage.join(out, 'scored')} --output OTHER_DIR tau=..."
        warnings.append(warning)
        print(f"[rsdpo] WARNING: {warning}", file=sys.stderr, flush=True)
    if (warning := truncation_warning(totals["reward_truncated"], totals["responses"],
                                      cfg.rewarding.max_length)) is not None:
        warnings.append(warning)
        print(f"[rsdpo] WARNING: {warning}", file=sys.stderr, flush=True)
    run = {
        "stage": "pipeline", "config": config, "fingerprint": cfg.fingerprint(), "models": models,
        "counts": counts, "ray_address": state.address,
        "throughput": _rates(state.committed, wall, state.t_start)
        | ({"object_store_peak_mib": round(state.object_store_peak / 2**20, 1)} if state.committed else {}),
        "error_rows": totals["error_rows"], "warnings": warnings,
        # where each shard this invocation committed ran: Ray node ids (`ray list nodes` maps them to hosts)
        "placement": [{k: row[k] for k in ("shard", "sampler_id", "sampler_node", "scorer_node")}
                      for row in sorted(state.committed, key=lambda row: row["shard"])],
        "raw_threshold": raw_threshold(cfg.pairing.tau, cfg.pairing.eta),
    }
    scored, pairs = storage.join(out, "scored"), storage.join(out, "pairs")
    write_manifest(scored, {"stage": "scored", "config": config, "models": models,
                            "counts": {k: counts[k] for k in ("rows_out", "row_errors", "shards")}})
    write_pairs_meta(pairs, cfg.pairing, committed(out, "pairs"), made_by="rsdpo run (the cluster pipeline)",
                     inputs=[scored], models=models, spreads=totals["spreads"],
                     upstream={k: config[k] for k in UPSTREAM_SECTIONS}, warnings=warnings)
    write_run_card(out, counts)
    if state.committed:
        tp = run["throughput"]
        title = (f"{out}: {len(state.committed)} shards, {sum(r['prompts'] for r in state.committed)} prompts; "
                 f"actors ready +{tp['actors_ready_s']:.1f}s, steady wall {tp['steady_wall_s']:.1f}s, "
                 f"engine busy {tp['engine_busy_share'] or 0:.0%} of it")
        run["timeline"] = {"t0": state.t_start, "title": title, "spans": timeline.spans(state.committed)}
        timeline.draw(run["timeline"]["spans"], state.t_start, storage.join(out, timeline.TIMELINE), title)
    write_manifest(out, run)
    return run


RUN_CARD = "README.md"


def write_run_card(out: str, counts: dict) -> str:
    """OUT/README.md: a dataset card whose YAML `configs` name the run's two shard folders, so that
    `datasets.load_dataset(OUT, "pairs")` (or "scored") reads that folder's shards and nothing else."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(configs=hub_configs({"pairs": "pairs", "scored": "scored"}),
                           tags=["dpo", "preference", "synthetic", "trl"])
    body = "\n".join([
        "# RS-DPO run",
        "",
        f"- `pairs`: {counts['pairs']} preference pairs in TRL's format (prompt / chosen / rejected) from "
        f"{counts['prompts_with_pairs']} prompts; its own card is `pairs/README.md`.",
        f"- `scored`: one row per prompt with its k responses and their rewards ({counts['rows_out']} "
        f"prompts, {counts['row_errors']} with an error, kept with its reason).",
        "",
        "```python",
        "from datasets import load_dataset",
        'pairs = load_dataset("THIS_FOLDER", "pairs", split="train")   # or "scored"',
        "# any Parquet reader takes a data/ folder as it is: pandas.read_parquet(\"THIS_FOLDER/pairs/data\")",
        "```",
        "",
        "What made the run (config, models, library versions, counts) is in `manifest.json`.",
    ])
    return storage.write_text(storage.join(out, RUN_CARD), str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")))
