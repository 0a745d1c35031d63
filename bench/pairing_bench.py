"""Benchmark: rs-dpo candidate pairs evaluated per second on one core, batched rule vs a naive loop.

    python bench/pairing_bench.py [--prompts 100000] [--k 16] [--naive-prompts 2000] [--no-end-to-end]

Random N(0, 1) rewards with a fixed seed; tau = 1, eta = 0.85 (paper defaults). A candidate is an
ordered (j, l), j != l: k(k-1) per prompt. Both rules run in this one process, on the same rewards
(the naive loop on a subset, whose pairs must match the batched rule's exactly), and the ratio is
of their rates. The end-to-end row times make_pairs on a synthetic scored table (dedup, table
building, shuffle included). Prints one JSON line, then a Markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")         # one core: keep any threaded kernel single-threaded
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairing import rules  # noqa: E402
from pairing.config import PairingConfig  # noqa: E402
from pairing.pairs import make_pairs  # noqa: E402
from rewarding.schema import SCORED_SCHEMA  # noqa: E402

TAU, ETA = 1.0, 0.85


def naive(rewards: np.ndarray, tau: float, eta: float) -> list[tuple[int, int, int]]:
    """Algorithm 1 as written: a Python double loop per prompt with a scalar sigmoid."""
    out = []
    for i, row in enumerate(rewards.tolist()):
        for j, rj in enumerate(row):
            for l_, rl in enumerate(row):
                if j != l_:
                    x = (rj - rl) / tau
                    s = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
                    if s > eta:
                        out.append((i, j, l_))
    return out


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """Best CPU time and best wall time over `repeats` runs, and the last result. CPU time (this
    process only) is the one-core figure; wall time also counts waiting when the cores are shared."""
    cpu, wall, result = math.inf, math.inf, None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall, result


def scored_table(rewards: np.ndarray) -> pa.Table:
    n, k = rewards.shape
    texts = [f"p{i} response {j}" for i in range(n) for j in range(k)]
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    lists = lambda values: pa.ListArray.from_arrays(offsets, values)  # noqa: E731
    prompt = pa.array([[{"role": "user", "content": f"question {i}"}] for i in range(n)], SCORED_SCHEMA.field("prompt").type)
    cols = {
        "prompt_id": pa.array([f"p{i}" for i in range(n)]), "prompt": prompt,
        "reference": pa.nulls(n, pa.string()), "source": pa.repeat("bench", n),
        "responses": lists(pa.array(texts)), "finish_reasons": lists(pa.repeat("stop", n * k)),
        "num_tokens": lists(pa.array(np.full(n * k, 8, dtype=np.int32))),
        "prompt_tokens": pa.array(np.full(n, 4, dtype=np.int32)), "seed": pa.array(np.arange(n)),
        "error": pa.nulls(n, pa.string()), "rewards": lists(pa.array(rewards.ravel())),
        "reward_mean": pa.array(rewards.mean(1)), "reward_std": pa.array(rewards.std(1)),
        "reward_min": pa.array(rewards.min(1)), "reward_max": pa.array(rewards.max(1)),
        "reward_truncated": pa.array(np.zeros(n, dtype=np.int32)),
    }
    return pa.table({f.name: cols[f.name] for f in SCORED_SCHEMA}, schema=SCORED_SCHEMA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--naive-prompts", type=int, default=2_000)
    ap.add_argument("--no-end-to-end", action="store_true")
    args = ap.parse_args()
    n, k = args.prompts, args.k
    rewards = np.random.default_rng(0).normal(size=(n, k))            # (n, k) raw rewards
    mask = np.ones((n, k), dtype=bool)
    per_prompt = k * (k - 1)

    c_batch, w_batch, (rows, ch, rj) = best_of(lambda: rules.rs_dpo_batch(rewards, mask, TAU, ETA), 3)
    sub = rewards[:args.naive_prompts]
    c_naive, w_naive, naive_pairs = best_of(lambda: naive(sub, TAU, ETA), 3)
    batch_sub = rules.rs_dpo_batch(sub, mask[:len(sub)], TAU, ETA)
    assert naive_pairs == list(zip(*(a.tolist() for a in batch_sub), strict=True)), "batched rule != naive loop"

    cand_batch, cand_naive = n * per_prompt, len(sub) * per_prompt
    record = {
        "bench": "pairing.rs_dpo", "prompts": n, "k": k, "tau": TAU, "eta": ETA, "candidates": cand_batch,
        "pairs": int(len(rows)), "naive_prompts": len(sub), "naive_matches_batched": True,
        "batched_cpu_s": round(c_batch, 4), "batched_wall_s": round(w_batch, 4),
        "naive_cpu_s": round(c_naive, 4), "naive_wall_s": round(w_naive, 4),
        "batched_pairs_per_cpu_s": round(cand_batch / c_batch), "naive_pairs_per_cpu_s": round(cand_naive / c_naive),
        "speedup_cpu": round((cand_batch / c_batch) / (cand_naive / c_naive), 1),
        "speedup_wall": round((cand_batch / w_batch) / (cand_naive / w_naive), 1),
    }
    if not args.no_end_to_end:
        table = scored_table(rewards)
        c_e2e, w_e2e, result = best_of(lambda: make_pairs(table, PairingConfig(tau=TAU, eta=ETA)), 1)
        assert result.stats["pairs"] == len(rows)
        record.update({"make_pairs_cpu_s": round(c_e2e, 3), "make_pairs_wall_s": round(w_e2e, 3),
                       "make_pairs_pairs_per_cpu_s": round(cand_batch / c_e2e)})
    print(json.dumps(record))
    print()
    print("| rule | prompts | candidate pairs | CPU s | wall s | candidate pairs / CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| naive Python double loop | {len(sub)} | {cand_naive} | {c_naive:.3f} | {w_naive:.3f} | "
          f"{cand_naive / c_naive:.3g} |")
    print(f"| rules.rs_dpo_batch | {n} | {cand_batch} | {c_batch:.3f} | {w_batch:.3f} | {cand_batch / c_batch:.3g} |")
    if "make_pairs_cpu_s" in record:
        print(f"| make_pairs end to end | {n} | {cand_batch} | {c_e2e:.3f} | {w_e2e:.3f} | "
              f"{cand_batch / c_e2e:.3g} |")
    print(f"\nbatched / naive: {record['speedup_cpu']}x by CPU time ({record['speedup_wall']}x by wall time); "
          f"target >= 1e6 candidate pairs/s: {'met' if cand_batch / max(c_batch, w_batch) >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
