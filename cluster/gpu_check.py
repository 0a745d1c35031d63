"""GPU check of the whole job on one H100 or H200, in under 8 minutes with the default sizes.

Builds a small random Llama policy and a random Llama reward model offline (or takes folders
with --model / --reward-model), runs sample -> score -> pair through a local Ray cluster with the
vLLM sampler on half of the GPU and the reward model (classifier backend, raw logits) on a
quarter of it, and prints the per-stage rates from the run's manifest, plus the scorer:sampler
ratio they imply (cluster/OPERATIONS.md "Sizing").

    python -m cluster.gpu_check [--out /tmp/rsdpo-gpu-check] [--model DIR] [--reward-model DIR]
                                [--prompts 512] [--k 8] [--max-tokens 256] [--eager]

Needs a GPU machine set up from requirements/gpu.txt (CUDA vllm, ray): without them it exits 2
naming what is missing. Importing this module needs none of them. Random weights emit gibberish
that rarely stops early, so nearly every response runs to --max-tokens: rates are for that length.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

NEEDED = ["vllm", "ray", "torch", "transformers", "pyarrow", "pydantic", "yaml"]


def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def build_llama(out: Path, *, hidden: int, layers: int, reward: bool) -> Path:
    """A random bf16 Llama with the offline ChatML BPE tokenizer of rsdpo.tiny."""
    from rsdpo.tiny import build_llama as build

    return build(out, reward=reward, hidden=hidden, layers=layers, bf16=True)


def write_prompts(path: Path, n: int) -> Path:
    """n synthetic single-turn prompts of 5-60 words (prompt lengths vary, as in real data)."""
    from rsdpo import storage  # after the NEEDED check: pyarrow may be missing there
    words = "the quick brown fox jumps over a lazy dog while rain falls on the sea".split()
    lines = []
    for i in range(n):
        body = " ".join(words[(i * 7 + j) % len(words)] for j in range(5 + (i * 13) % 56))
        lines.append(json.dumps({"prompt": f"Question {i}: {body}?", "prompt_id": f"g{i:05d}"}))
    storage.write_text(path, "\n".join(lines) + "\n")
    return path


def report(run: dict, k: int) -> dict:
    """Per-stage rates from the manifest, and the scorer replicas one sampler replica needs."""
    t = run["throughput"]
    need = None
    if t.get("sampler_busy_prompts_per_s") and t.get("scorer_busy_responses_per_s"):
        need = t["sampler_busy_prompts_per_s"] * k / t["scorer_busy_responses_per_s"]
    rows = [
        ("end-to-end prompts/s (wall, incl. engine start)", t.get("prompts_per_s")),
        ("end-to-end output tokens/s", t.get("output_tokens_per_s")),
        ("end-to-end responses scored/s", t.get("responses_scored_per_s")),
        ("end-to-end pairs/s", t.get("pairs_per_s")),
        ("sampler replica busy: output tokens/s", t.get("sampler_busy_output_tokens_per_s")),
        ("sampler replica busy: prompts/s", t.get("sampler_busy_prompts_per_s")),
        ("scorer replica busy: responses/s", t.get("scorer_busy_responses_per_s")),
        ("pairing busy: prompts/s", t.get("pairing_busy_prompts_per_s")),
        ("scorer replicas per sampler replica (k * sampler prompts/s / scorer responses/s)",
         round(need, 3) if need is not None else None),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n[gpu_check] per-stage rates (manifest throughput):")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return {"throughput": t, "scorer_per_sampler": need, "counts": run["counts"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/rsdpo-gpu-check", help="work folder (models, prompts, run)")
    ap.add_argument("--model", help="policy folder (default: build a random Llama, hidden 1024, 8 layers)")
    ap.add_argument("--reward-model", help="num_labels=1 reward model folder (default: random Llama, hidden 512)")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs/compile (faster start)")
    args = ap.parse_args(argv)

    if missing := missing_packages():
        print(f"error: cluster.gpu_check needs {', '.join(missing)}, not installed for {sys.executable}. "
              f"Run it on a GPU machine set up with `pip install -r requirements/gpu.txt` "
              f"(or `RSDPO_GPU=1 bash scripts/setup_env.sh`).", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch (check nvidia-smi and CUDA_VISIBLE_DEVICES)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"[gpu_check] {torch.cuda.get_device_name(0)}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB", flush=True)

    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    policy = Path(args.model) if args.model else build_llama(out / "policy", hidden=1024, layers=8, reward=False)
    rm = Path(args.reward_model) if args.reward_model else build_llama(out / "reward", hidden=512, layers=4, reward=True)
    prompts = write_prompts(out / "prompts.jsonl", args.prompts)
    print(f"[gpu_check] models ready in {time.perf_counter() - t0:.0f}s: policy {policy}, reward {rm}", flush=True)

    import ray

    from cluster.config import RunConfig
    from cluster.pipeline import run_pipeline
    from rsdpo import storage

    cfg = RunConfig.model_validate({
        "output_dir": str(out / "run"), "seed": 0, "shard_size": 64,
        "prompts": {"source": str(prompts)},
        "generation": {"model": str(policy), "k": args.k, "max_tokens": args.max_tokens, "max_model_len": 1024,
                       # vLLM takes this share of the whole GPU's memory; the scorer shares the GPU.
                       "vllm": {"gpu_memory_utilization": 0.45, "enforce_eager": args.eager}},
        "rewarding": {"backend": "classifier", "model": str(rm), "max_length": 1024, "dtype": "bfloat16"},
        # Random reward logits have no meaningful scale: a small tau only exercises pairing.
        "pairing": {"tau": 0.01, "eta": 0.85},
        "resources": {"sampler_replicas": 1, "sampler_num_gpus": 0.5, "sampler_num_cpus": 2,
                      "scorer_replicas": 1, "scorer_num_gpus": 0.25, "scorer_num_cpus": 2},
    })
    try:
        run = run_pipeline(cfg, fresh=True)
    finally:
        ray.shutdown()
    result = report(run, args.k)
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    storage.write_text(out / "gpu_check.json", json.dumps(result, indent=2))
    c = run["counts"]
    ok = c["balanced"] and c["row_errors"] == 0
    print(f"[gpu_check] {'ok' if ok else 'FAILED'}: {c['rows_out']} prompts, {c['pairs']} pairs, "
          f"{result['seconds_total']}s in all -> {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
