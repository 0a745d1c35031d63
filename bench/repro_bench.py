"""Benchmark: what reproducible sampling costs, against the behaviour before, in one run.

    python bench/repro_bench.py [--tiny | --model DIR] [--prompts 32] [--shard-size 8] [--k 4]
                                [--max-tokens 48] [--repeats 2] [--dtype auto]

One generation.Sampler (one vLLM engine, the pipeline's CPU defaults), the same prompts
(AlpacaEval helpful_base + oasst, the first --prompts) and seeds for every variant:
  free      the engine loop as it was: each request is sent to the engine core while the core
            already steps, so the first steps batch whichever requests had arrived
  together  the loop holds the core's scheduler until all requests admitted at once are queued
            (vLLM's sleep(level=0) / wake_up(["scheduling"])): the default now
and two ways of feeding it shards of --shard-size prompts:
  2 in flight  two threads call the sampler at once, admitted max_tokens/2 steps apart (the
               pipeline's default resources.sampler_shards_in_flight=2)
  1 in flight  one shard after another (sampler_shards_in_flight=1)
Each variant runs --repeats times; reported: output tok/s (best repeat), its ratio against
free / 2 in flight (the pipeline before), and how many responses every repeat reproduced.
Prints one JSON line, then Markdown.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny random Llama (rsdpo/tiny.py) instead of SmolLM2")
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto", help="vLLM dtype (auto: the model's, bf16 on this CPU)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from generation.config import GenerationConfig, PromptsConfig, Split
    from generation.prompts import load_prompts
    from generation.sampler import EngineLoop, Sampler
    from generation.schema import NUM_TOKENS, RESPONSES

    class FreeLoop(EngineLoop):
        """The loop before: requests go to the engine core one by one while it steps."""

        def _admit_together(self, calls, owner):
            for call in calls:
                self._admit(call, owner)

    model = args.model
    if args.tiny:
        from rsdpo.tiny import build_tiny_llama

        model = str(build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny"))
    prompts = load_prompts(PromptsConfig(subsets=["helpful_base", "oasst"], split=Split.TRAIN,
                                         limit=args.prompts)).table
    shards = [prompts.slice(i, args.shard_size) for i in range(0, prompts.num_rows, args.shard_size)]
    vllm = {} if args.dtype == "auto" else {"dtype": args.dtype}
    cfg = GenerationConfig(model=model, k=args.k, max_tokens=args.max_tokens, top_p=0.95, max_model_len=1024,
                        vllm=vllm)
    sampler = Sampler(cfg, shards_in_flight=2)
    stagger = sampler.loop.stagger_steps
    loops = {"free": lambda: FreeLoop(sampler.llm, stagger), "together": lambda: EngineLoop(sampler.llm, stagger)}

    def run(in_flight: int) -> tuple[float, list]:
        """(seconds, per shard the samples table) for every shard, `in_flight` at a time."""
        out: list = [None] * len(shards)
        sampler.llm.reset_prefix_cache()  # every run starts cold, as a new job's engine does
        t0 = time.perf_counter()
        if in_flight == 1:
            for i, shard in enumerate(shards):
                out[i] = sampler(shard)
        else:
            def worker(j: int):  # shard j, j + in_flight, ...: the calls overlap as shards in flight do
                for i in range(j, len(shards), in_flight):
                    out[i] = sampler(shards[i])

            threads = [threading.Thread(target=worker, args=(j,)) for j in range(in_flight)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return time.perf_counter() - t0, out

    results, metrics = {}, []
    for loop_name in ("free", "together"):
        sampler.loop.close()
        sampler.loop = loops[loop_name]()
        for in_flight in (2, 1):
            name = f"{loop_name} / {in_flight} in flight"
            rates, texts = [], []
            for _ in range(args.repeats):
                dt, out = run(in_flight)
                rates.append(sum(sum(n) for t in out for n in t.column(NUM_TOKENS).to_pylist()) / dt)
                texts.append([r for t in out for rs in t.column(RESPONSES).to_pylist() for r in rs])
            same = sum(all(rep[i] == texts[0][i] for rep in texts) for i in range(len(texts[0])))
            results[name] = {"tok_per_s": round(max(rates), 1), "tok_per_s_repeats": [round(r, 1) for r in rates],
                             "reproduced": same, "responses": len(texts[0]), "first_texts": texts[0]}
            print(f"[repro] {name}: {results[name]['tok_per_s']} tok/s, {same}/{len(texts[0])} responses "
                  f"the same in {args.repeats} repeats", file=sys.stderr, flush=True)
    base = results["free / 2 in flight"]["tok_per_s"]
    ref = results["together / 1 in flight"]["first_texts"]
    for name, r in results.items():
        metrics.append(metric("repro", f"{name}: tok/s ratio vs free / 2 in flight", round(r["tok_per_s"] / base, 3)))
        metrics.append(metric("repro", f"{name}: responses reproduced across repeats",
                              f"{r['reproduced']}/{r['responses']}"))
        r["same_as_together_1"] = sum(a == b for a, b in zip(r.pop("first_texts"), ref, strict=True))
    record = {"bench": "repro", "model": model, "dtype": str(sampler.llm.llm_engine.model_config.dtype),
              "prompts": prompts.num_rows, "shard_size": args.shard_size, "k": args.k,
              "max_tokens": args.max_tokens, "repeats": args.repeats, "variants": results, "metrics": metrics}
    sampler.close()
    emit(record, [f"- {n}: {r['tok_per_s']} tok/s, {r['reproduced']}/{r['responses']} reproduced, "
                  f"{r['same_as_together_1']} equal to together / 1 in flight" for n, r in results.items()])


if __name__ == "__main__":
    main()
