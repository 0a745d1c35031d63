"""The RS-DPO data job as one streaming Ray Data pipeline.

    prompts (driver: load, validate, quarantine, seeded shuffle, cut into shards)
      -> map_batches(SamplerActor)  actor pool of vLLM engines, one shard per batch
      -> map_batches(ScorerActor)   actor pool of reward models
      -> map_batches(commit_shard)  tasks: pair (pure), write pairs shard, write scored shard
      => OUT/scored/shard-NNNNN.parquet, OUT/pairs/shard-NNNNN.parquet, manifests, dataset card

A shard (`shard_size` prompts) is the unit of streaming, commit and resume: each writer writes
the pairs shard then the scored shard, each atomically (temp + rename); the scored shard is the
commit marker. A re-run with the same config skips committed shards. Seeds derive from
(run seed, prompt_id), so the content of a shard does not depend on which actor took it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from cluster.config import RunConfig
from common.assets import model_identity, resolve_model
from common.files import atomic_path, clear_temp_files
from common.manifest import read_manifest, write_manifest
from common.shards import conform, list_shards, write_shard
from generation.config import SamplerConfig
from generation.prompts import load_prompts
from generation.schema import ERROR, NUM_TOKENS, PROMPT_ID, RESPONSES
from pairing.config import PairingConfig
from pairing.pairs import coverage_warning, make_pairs
from pairing.rules import raw_threshold, stable_key
from pairing.schema import PAIRS_SCHEMA
from rewarding.config import ScorerConfig
from rewarding.schema import REWARD_MAX, REWARD_MIN, SCORED_SCHEMA

log = logging.getLogger("rsdpo")

# Bookkeeping columns that travel with each row through the actors; never written to shards.
SHARD = "_shard"
SHARD_ROWS = "_shard_rows"
T_SAMPLE = "_t_sample"
T_SCORE = "_t_score"
ENGINE_BUSY = "_engine_busy"   # the sampler actor's engine-step seconds so far (cumulative)
SAMPLER_ID = "_sampler_id"     # which sampler actor: busy seconds add up per actor
META = [SHARD, SHARD_ROWS]
SAMPLER_META = [T_SAMPLE, ENGINE_BUSY, SAMPLER_ID]
# Workers never reach for a hub; vLLM's per-request INFO lines would drown the job's progress.
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


def scorer_env(scorer_num_cpus: float) -> dict[str, str]:
    """A scorer actor with two or more CPUs reserved tokenizes on that many threads. Tokenizing was
    42% of a GPU Scorer pass, and threads made the pass 1.8x faster (bench/README.md); one that
    shares a core with the engine, as on the CPU default, stays on one."""
    if (threads := int(scorer_num_cpus)) < 2:
        return WORKER_ENV
    return WORKER_ENV | {"TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(threads)}


class RunRefused(RuntimeError):
    """The output folder holds a run this config would contradict; the message says what to do."""


class ErrorRateExceeded(RuntimeError):
    pass


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
        result = make_pairs(scored, pcfg, shuffle_seed=stable_key(pcfg.seed, shard))
        t_pair = time.perf_counter() - t0
        write_shard(result.pairs, out / "pairs" / f"{shard}.parquet", PAIRS_SCHEMA)
        write_shard(scored, out / "scored" / f"{shard}.parquet", SCORED_SCHEMA)
        errors = scored.column(ERROR).to_pylist()
        summaries.append({
            "shard": shard, "prompts": scored.num_rows, "row_errors": sum(e is not None for e in errors),
            "pairs": result.pairs.num_rows, "prompts_with_pairs": result.stats["prompts_with_pairs"],
            "responses": sum(len(r) for r in scored.column(RESPONSES).to_pylist()),
            "output_tokens": sum(sum(t) for t in scored.column(NUM_TOKENS).to_pylist()),
            "t_sample": part.column(T_SAMPLE)[0].as_py(), "t_score": part.column(T_SCORE)[0].as_py(),
            "engine_busy": part.column(ENGINE_BUSY)[0].as_py(), "sampler_id": part.column(SAMPLER_ID)[0].as_py(),
            "t_pair": t_pair, "committed_at": time.time(),
        })
    return pa.Table.from_pylist(summaries)


TAIL_SPLIT = 4  # the last shard_size prompts of a job of >= 4 shards go in shards a quarter the size


def shard_sizes(n: int, shard_size: int) -> list[int]:
    """Prompts per shard, in order: shard_size each, except that a job of at least TAIL_SPLIT full
    shards cuts its last shard_size prompts into shards of shard_size / TAIL_SPLIT. Nothing overlaps
    the last shard's scoring and commit (generation has ended), so a small last shard keeps the
    job's tail short; while shards are in flight, small ones cost the engine nothing."""
    sizes, rest = [], n
    tapered = n >= TAIL_SPLIT * shard_size
    while rest > (shard_size if tapered else 0):
        sizes.append(min(shard_size, rest))
        rest -= sizes[-1]
    small = -(-shard_size // TAIL_SPLIT)
    while rest > 0:
        sizes.append(min(small, rest))
        rest -= sizes[-1]
    return sizes


def plan_shards(prompts: pa.Table, cfg: RunConfig) -> list[tuple[str, pa.Table]]:
    """Seeded shuffle (so shards mix sources/topics), then cut into named shards (shard_sizes)."""
    perm = np.random.default_rng(cfg.seed).permutation(prompts.num_rows)
    shuffled = prompts.take(pa.array(perm, pa.int64()))
    plan, start = [], 0
    for i, size in enumerate(shard_sizes(shuffled.num_rows, cfg.shard_size)):
        plan.append((f"shard-{i:05d}", shuffled.slice(start, size)))
        start += size
    return plan


def _check_resume(cfg: RunConfig, plan: list[tuple[str, pa.Table]], fresh: bool, models: dict) -> None:
    out = cfg.out
    plan_ids = {name: t.column(PROMPT_ID).to_pylist() for name, t in plan}
    model_hashes = {role: m["sha256"] for role, m in models.items()}
    record = {"fingerprint": cfg.fingerprint(), "models": model_hashes, "shards": plan_ids}
    plan_file = out / "plan.json"
    if fresh:
        for sub in ("scored", "pairs"):
            shutil.rmtree(out / sub, ignore_errors=True)
        plan_file.unlink(missing_ok=True)
    elif plan_file.exists():
        old = json.loads(plan_file.read_text())
        if old["fingerprint"] != record["fingerprint"]:
            raise RunRefused(
                f"{out} holds shards from a different configuration (fingerprint {old['fingerprint']} != "
                f"{record['fingerprint']}: model, k, seed, sampling, reward or pairing settings changed). "
                f"Resuming would mix inconsistent shards. Use a new output_dir, or pass --fresh to discard "
                f"them. To re-pair cached rewards with new eta/tau, run "
                f"`python -m pairing --input {out / 'scored'} --output OTHER_DIR eta=.. tau=..`.")
        if old.get("models", model_hashes) != model_hashes:
            changed = [r for r in model_hashes if old["models"].get(r) != model_hashes[r]]
            raise RunRefused(
                f"{out}: the {' and '.join(changed)} model's files changed since the shards were written "
                f"(same path, different content hash). Use a new output_dir or pass --fresh.")
        if old["shards"] != plan_ids:
            raise RunRefused(
                f"{out}: the prompt set or its cut into shards changed since the shards were written "
                f"(different prompts, order, or a version with other shard boundaries). Use a new "
                f"output_dir or pass --fresh.")
    elif list((out / "scored").glob("*.parquet")) if (out / "scored").exists() else False:
        raise RunRefused(f"{out}/scored holds shards without a plan.json; pass --fresh or use a new output_dir")
    out.mkdir(parents=True, exist_ok=True)
    clear_temps(out)
    with atomic_path(plan_file) as tmp:
        tmp.write_text(json.dumps(record))


def clear_temps(out: Path) -> None:
    """Clear the shard writers' temp files in the run's scored/ and pairs/ folders."""
    for folder in (out / "scored", out / "pairs"):
        clear_temp_files(folder)


# Ray Data's block prefetcher thread parks on a condition until fed, and is stopped only when an
# iteration runs to its end; after an early stop nothing feeds it, so it is not waited for.
PARKED_RAY_DATA_THREADS = frozenset({"Prefetcher"})


def end_iteration(rows, threads_before: set[threading.Thread], timeout: float = 30.0) -> list[threading.Thread]:
    """End a Ray Data iteration the driver left early, and wait for the threads it started.

    Closing the iterator shuts Ray Data's executor down, but its fetch threads are still calling
    into Ray while they unwind. Ending the Ray session under them makes Ray quit the process
    with status 1 ("The core worker has already been shutdown"), and the job's own error and
    exit status are lost. Returns the threads still alive at the deadline (none, normally)."""
    close = getattr(rows, "close", None)
    if close is not None:
        close()
    deadline = time.monotonic() + timeout
    new = [t for t in threading.enumerate()
           if t not in threads_before and t is not threading.current_thread() and t.name not in PARKED_RAY_DATA_THREADS]
    for t in new:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in new if t.is_alive()]
    if alive:
        log.warning("Ray Data threads still running after %.0fs: %s", timeout, [t.name for t in alive])
    return alive


def connect(cfg: RunConfig) -> str:
    """Join the cluster `ray job submit` points us at (RAY_ADDRESS), else start a local one."""
    if ray.is_initialized():
        return "existing"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return os.environ["RAY_ADDRESS"]
    # Workers of a local cluster import this repo's packages (actors, Ray Train workers).
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=cfg.resources.num_cpus, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    return "local"


def _totals(out: Path) -> dict:
    """Counts over every committed shard (this session's and earlier ones)."""
    rows = errors = pairs = with_pairs = 0
    error_rows = []
    spreads = []  # per usable prompt: max - min reward, for the coverage warning
    for path in list_shards(out / "scored"):
        t = pq.read_table(path, columns=[PROMPT_ID, ERROR, REWARD_MIN, REWARD_MAX])
        for pid, err, lo, hi in zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True):
            rows += 1
            if err is not None:
                errors += 1
                error_rows.append({"prompt_id": pid, "error": err, "shard": path.name})
            elif lo is not None:
                spreads.append(hi - lo)
    pair_ids = set()
    for path in list_shards(out / "pairs"):
        t = pq.read_table(path, columns=[PROMPT_ID])
        pairs += t.num_rows
        pair_ids.update(t.column(PROMPT_ID).to_pylist())
    with_pairs = len(pair_ids)
    return {"rows": rows, "row_errors": errors, "pairs": pairs, "prompts_with_pairs": with_pairs,
            "error_rows": error_rows, "spreads": np.asarray(spreads, dtype=np.float64)}


def run_pipeline(cfg: RunConfig, *, fresh: bool = False) -> dict:
    """Run (or resume) the job; returns the run manifest."""
    t_start = time.time()
    out = cfg.out
    loaded = load_prompts(cfg.prompts)
    if loaded.table.num_rows == 0:
        raise ValueError(f"prompts.source={cfg.prompts.source}: no usable prompts "
                         f"({len(loaded.rejects)} rejected; see the reasons in {out}/quarantine.jsonl)")
    plan = plan_shards(loaded.table, cfg)
    policy_path = resolve_model(cfg.generation.model)
    reward_path = resolve_model(cfg.rewarding.model)
    models = {"policy": model_identity(policy_path), "reward": model_identity(reward_path)}
    _check_resume(cfg, plan, fresh, models)
    if loaded.rejects:
        (out / "quarantine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in loaded.rejects))
        print(f"[rsdpo] {len(loaded.rejects)} prompt row(s) quarantined -> {out / 'quarantine.jsonl'}", flush=True)
    done = {p.stem for p in list_shards(out / "scored")} if (out / "scored").exists() else set()
    todo = [(name, t) for name, t in plan if name not in done]
    print(f"[rsdpo] {loaded.table.num_rows} prompts in {len(plan)} shards; {len(done)} already committed, "
          f"{len(todo)} to run -> {out}", flush=True)

    session: list[dict] = []
    address = None
    if todo:
        address = connect(cfg)
        r = cfg.resources
        blocks = []
        for name, t in todo:
            t = t.append_column(SHARD, pa.array([name] * t.num_rows, pa.string()))
            blocks.append(t.append_column(SHARD_ROWS, pa.array([t.num_rows] * t.num_rows, pa.int64())))
        ds = ray.data.from_arrow(blocks)
        common = {"batch_size": None, "batch_format": "pyarrow", "zero_copy_batch": True,
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
                            compute=sampler_pool,
                            num_cpus=r.sampler_num_cpus, num_gpus=r.sampler_num_gpus, **retry, **common)
        ds = ds.map_batches(ScorerActor, fn_constructor_kwargs={"config": cfg.rewarding.model_dump(mode="json")},
                            compute=ray.data.ActorPoolStrategy(size=r.scorer_replicas),
                            num_cpus=r.scorer_num_cpus, num_gpus=r.scorer_num_gpus, **retry,
                            **common | {"runtime_env": {"env_vars": scorer_env(r.scorer_num_cpus)}})
        ds = ds.map_batches(commit_shard, fn_kwargs={"out_dir": str(out), "pairing": cfg.pairing.model_dump(mode="json")},
                            num_cpus=r.writer_num_cpus, max_retries=r.max_actor_restarts, **common)
        t0 = time.time()
        n_prompts = sum(t.num_rows for _, t in todo)
        seen = errors = 0
        threads_before = set(threading.enumerate())
        rows = iter(ds.iter_rows())
        try:
            for row in rows:
                session.append(row)
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
                        f"column of {out / 'scored'} and fix the input or config, then re-run to resume.")
        except BaseException:
            # Stopped early (error rate, Ctrl-C, a stage that gave up): end this job's tasks first,
            # since a writer killed mid-file leaves its temp file, then clear those, so the folders
            # hold committed shards only. A Ray session this process did not open is left running.
            end_iteration(rows, threads_before)
            if address != "existing":
                ray.shutdown()
            clear_temps(out)
            raise
    return finish(cfg, loaded, plan, session, t_start, address, models)


def _rates(session: list[dict], wall: float) -> dict:
    if not session:
        return {}
    s = {k: sum(row[k] for row in session) for k in ("prompts", "responses", "output_tokens", "pairs",
                                                     "t_sample", "t_score", "t_pair")}
    # engine seconds: each actor reports its running total, so the last (largest) one per actor
    engine: dict[str, float] = {}
    for row in session:
        engine[row["sampler_id"]] = max(engine.get(row["sampler_id"], 0.0), row["engine_busy"])
    s["t_engine"] = sum(engine.values())
    busy = lambda n, t: round(n / t, 2) if t > 0 else None  # noqa: E731
    return {
        "wall_s": round(wall, 1),
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
        "busy_s": {"sample": round(s["t_engine"], 1), "score": round(s["t_score"], 1), "pair": round(s["t_pair"], 3)},
    }


def finish(cfg, loaded, plan, session, t_start, address, models) -> dict:
    out = cfg.out
    totals = _totals(out)
    wall = time.time() - t_start
    prompts_in = loaded.table.num_rows + len(loaded.rejects)
    counts = {
        "prompts_in": prompts_in,
        "rows_out": totals["rows"] - totals["row_errors"],
        "row_errors": totals["row_errors"],
        "quarantined": len(loaded.rejects),
        "shards": len(list_shards(out / "scored")),
        "shards_planned": len(plan),
        "pairs": totals["pairs"],
        "prompts_with_pairs": totals["prompts_with_pairs"],
    }
    counts["balanced"] = counts["prompts_in"] == counts["rows_out"] + counts["row_errors"] + counts["quarantined"]
    config = cfg.model_dump(mode="json")
    warnings = []
    coverage = {"prompts_in": totals["rows"], "prompts_errored": totals["row_errors"],
                "prompts_with_pairs": totals["prompts_with_pairs"]}
    if (warning := coverage_warning(cfg.pairing, coverage, totals["spreads"])) is not None:
        warning += f". Re-pair without regenerating: python -m pairing --input {out / 'scored'} --output OTHER_DIR tau=..."
        warnings.append(warning)
        print(f"[rsdpo] WARNING: {warning}", file=sys.stderr, flush=True)
    run = {
        "stage": "pipeline", "config": config, "fingerprint": cfg.fingerprint(), "models": models,
        "counts": counts, "throughput": _rates(session, wall), "ray_address": address,
        "error_rows": totals["error_rows"], "warnings": warnings,
        "threshold_raw": raw_threshold(cfg.pairing.tau, cfg.pairing.eta),
    }
    write_manifest(out / "scored", {"stage": "scored", "config": config, "models": models,
                                    "counts": {k: counts[k] for k in ("rows_out", "row_errors", "shards")}})
    write_manifest(out / "pairs", {"stage": "pairing", "config": {"pairing": config["pairing"]}, "models": models,
                                   "inputs": [str(out / "scored")], "threshold_raw": run["threshold_raw"],
                                   "counts": {"prompts_in": totals["rows"], "pairs": counts["pairs"],
                                              "prompts_with_pairs": counts["prompts_with_pairs"],
                                              "prompts_errored": counts["row_errors"]},
                                   "warnings": warnings})
    try:
        from pairing.card import write_card

        write_card(out / "pairs", cfg.pairing, read_manifest(out / "pairs")["counts"], [str(out / "scored")])
    except ImportError:
        pass
    write_manifest(out, run)
    return run
