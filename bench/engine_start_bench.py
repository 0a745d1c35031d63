"""Benchmark: where the vLLM engine runs on a CPU host (generation.engine_in_process), start-up and
sampling, the two settings in turn.

    python bench/engine_start_bench.py [--pairs 3] [--prompts 8] [--k 8] [--max-tokens 64]

Each measurement is a fresh Python process, as a sampler actor is: it imports the Sampler, builds it
on the embedded default policy (SmolLM2-135M-Instruct, the default config's engine arguments),
samples the same prompts with the same per-prompt seeds, and exits. Timed from outside: start-up =
process start to the engine ready; sampling = the one call. The child gets OMP_NUM_THREADS=1, as Ray
gives a 1-CPU sampler actor. The settings alternate (in process, own processes, in process, ...) and
each ratio is taken within a pair, so the machine's drift between pairs cancels. The samples of the
two settings are compared too: they must be the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402

CHILD = """
import hashlib, json, sys, time
from cluster.config import RunConfig
from generation.prompts import load_prompts
from generation.sampler import Sampler
from rsdpo.cli import load_config

cfg = load_config(RunConfig, sys.argv[1], sys.argv[2:])
prompts = load_prompts(cfg.prompts).table
sampler = Sampler(cfg.generation)
print("READY", flush=True)
t0 = time.perf_counter()
out = sampler(prompts)
dt = time.perf_counter() - t0
tokens = sum(sum(n) for n in out.column("num_tokens").to_pylist())
digest = hashlib.sha256(json.dumps(out.column("responses").to_pylist()).encode()).hexdigest()[:16]
print("DONE", json.dumps({"sample_s": dt, "tokens": tokens, "digest": digest}), flush=True)
sampler.close()
"""


def once(in_process: bool, overrides: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    args = [sys.executable, "-c", CHILD, str(ROOT / "cluster/configs/default.yaml"), *overrides,
            f"generation.engine_in_process={str(in_process).lower()}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready = result = None
    for line in proc.stdout:
        if line.startswith("READY"):
            ready = time.perf_counter() - t0
        elif line.startswith("DONE "):
            result = json.loads(line[5:])
    if proc.wait() != 0 or ready is None or result is None:
        raise SystemExit(f"engine_start_bench: the child (engine_in_process={in_process}) failed, exit {proc.returncode}")
    return {"start_s": round(ready, 2), "sample_s": round(result["sample_s"], 2),
            "tokens_per_s": round(result["tokens"] / result["sample_s"], 1), "digest": result["digest"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    overrides = [f"prompts.limit={args.prompts}", f"generation.k={args.k}", f"generation.max_tokens={args.max_tokens}",
                 "training=null", "evaluation=null"]
    pairs = []
    for i in range(args.pairs):
        pair = {"in_process": once(True, overrides), "own_processes": once(False, overrides)}
        pairs.append(pair)
        print(f"[engine_start] pair {i + 1}: {json.dumps(pair)}", file=sys.stderr, flush=True)
    same = len({p[m]["digest"] for p in pairs for m in p}) == 1

    def median_ratio(key: str) -> float:
        return round(statistics.median(p["in_process"][key] / p["own_processes"][key] for p in pairs), 3)

    def median(mode: str, key: str) -> float:
        return round(statistics.median(p[mode][key] for p in pairs), 2)

    metrics = [
        metric("engine_start", "start-up s, in process / own processes (median of pairs)", median_ratio("start_s"), "< 1"),
        metric("engine_start", "sampling tok/s, in process / own processes", median_ratio("tokens_per_s"), ">= 0.9"),
        metric("engine_start", "start-up s in process (median)", median("in_process", "start_s")),
        metric("engine_start", "start-up s in own processes (median)", median("own_processes", "start_s")),
        metric("engine_start", "the same samples in both settings", same),
    ]
    emit({"bench": "engine_start", "prompts": args.prompts, "k": args.k, "max_tokens": args.max_tokens,
          "pairs": pairs, "same_samples": same, "metrics": metrics})


if __name__ == "__main__":
    main()
