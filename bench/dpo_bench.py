"""DPO training throughput with the reference log-probs precomputed once vs computed every step.

    python -m bench.dpo_bench [--steps 24] [--pairs N] [--max-length 128] [--batch 4] [--repeats 2]
                              [--model PATH] [--threads 1] [--out REPORT.json] [dpo_key=value ...]

Both variants run the real training stage (training.train.train) on the same synthetic pairs, seed and
tiny model (rsdpo.tiny, unless --model), interleaved A/B/A/B in one process so that load from other
work on the machine hits both alike. Reported per variant (median over repeats):

- train tokens/s and steps/s: the Trainer's own train_runtime (training loop only);
- setup s: data + model load + (precomputed variant) the one reference pass over all pairs;
- end-to-end s: setup + training.

The ratio "train tokens/s precomputed / computed every step" is the headline; the end-to-end ratio
says whether the one-off pass pays for itself at this number of steps per pair. The final losses of
the two variants must agree (same reference, same data order): printed as a check.
Prints JSON, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from pathlib import Path

import pyarrow as pa

from pairing.schema import PAIRS_SCHEMA
from rsdpo.cli import parse_overrides
from rsdpo.shards import shard_name, shard_path, write_shard
from rsdpo.tiny import build_tiny_llama
from training.config import TrainingConfig

WORDS = ("the quick brown fox jumps over lazy dog capital of france paris poem rain sea reward model "
         "transformer token predicts preference pairs train policy").split()


def synthetic_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = [{
        "prompt": [{"role": "user", "content": text(rng.randint(8, 24))}],
        "chosen": [{"role": "assistant", "content": text(rng.randint(16, 48))}],
        "rejected": [{"role": "assistant", "content": text(rng.randint(16, 48))}],
        "prompt_id": f"p{i // 4}", "chosen_reward": 1.0, "rejected_reward": -1.0,
        "chosen_index": 0, "rejected_index": 1, "strategy": "bench",
    } for i in range(n)]
    write_shard(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), shard_path(path, shard_name(0)), PAIRS_SCHEMA)


def run_once(model: str, pairs: Path, out: Path, precompute: bool, args) -> dict:
    from training.train import train

    config = TrainingConfig(
        model=model, max_length=args.max_length, precompute_ref_log_probs=precompute, existing="restart",
        dpo={"max_steps": args.steps, "per_device_train_batch_size": args.batch, "save_strategy": "no",
             "logging_steps": args.steps, "disable_tqdm": True, **args.dpo},
    )
    record = train(config, str(pairs), out)
    m = record["metrics"]
    tokens = (m.get("last_log") or {}).get("num_tokens") or m.get("num_tokens")
    return {
        "train_s": m["train_runtime"],
        "steps_per_s": m["train_steps_per_second"],
        "tokens_per_s": tokens / m["train_runtime"] if tokens else None,
        "setup_s": m["setup_s"],
        "end_to_end_s": m["setup_s"] + m["train_runtime"],
        "train_loss": m["train_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per run")
    ap.add_argument("--pairs", type=int, help="synthetic pairs (default: steps x batch, one epoch, so the "
                    "precomputed variant computes exactly the log-probs it uses)")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, interleaved")
    ap.add_argument("--model", help="policy folder (default: a tiny random Llama built here)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads. 1 by default: on a small shared CPU box a 2-thread OpenMP "
                    "kernel stalls whenever another process holds a core (measured: a tiny-model forward "
                    "went from 10 ms to 370 ms), which would swamp the difference measured here")
    ap.add_argument("--out", help="also write the JSON report here")
    ap.add_argument("dpo", nargs="*", help="extra trl.DPOConfig key=value for both variants "
                    "(e.g. gradient_checkpointing=false)")
    args = ap.parse_args()
    args.pairs = args.pairs or args.steps * args.batch
    args.dpo = parse_overrides(args.dpo)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
        tmp = Path(tmp)
        model = args.model or str(build_tiny_llama(tmp / "model"))
        synthetic_pairs(tmp / "pairs", args.pairs)
        runs: dict[str, list[dict]] = {"precomputed": [], "every_step": []}
        for r in range(args.repeats):
            for name, pre in (("precomputed", True), ("every_step", False)):
                runs[name].append(run_once(model, tmp / "pairs", tmp / f"out-{name}-{r}", pre, args))

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    variants = {name: {k: round(med(name, k), 4) for k in runs[name][0] if runs[name][0][k] is not None}
                for name in runs}
    report = {
        "setup": {"pairs": args.pairs, "steps": args.steps, "max_length": args.max_length, "batch": args.batch,
                  "repeats": args.repeats, "dpo": args.dpo, "threads": args.threads, "model": args.model or "tiny random Llama (rsdpo.tiny)",
                  "cpus": os.cpu_count()},
        "variants": variants,
        "runs": runs,
        "ratio_train_tokens_per_s": round(med("precomputed", "tokens_per_s") / med("every_step", "tokens_per_s"), 3),
        "ratio_train_steps_per_s": round(med("precomputed", "steps_per_s") / med("every_step", "steps_per_s"), 3),
        "ratio_end_to_end": round(med("every_step", "end_to_end_s") / med("precomputed", "end_to_end_s"), 3),
        "loss_abs_diff": abs(med("precomputed", "train_loss") - med("every_step", "train_loss")),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print()
    print("| variant | train tokens/s | steps/s | setup s | end-to-end s | train loss |")
    print("|---|---|---|---|---|---|")
    for name, v in variants.items():
        print(f"| {name} | {v.get('tokens_per_s', float('nan')):.0f} | {v['steps_per_s']:.2f} | "
              f"{v['setup_s']:.1f} | {v['end_to_end_s']:.1f} | {v['train_loss']:.4f} |")
    print(f"\nprecomputed / every step: **{report['ratio_train_tokens_per_s']}x** train tokens/s, "
          f"{report['ratio_train_steps_per_s']}x steps/s, {report['ratio_end_to_end']}x end to end "
          f"({args.steps} steps over {args.pairs} pairs)")


if __name__ == "__main__":
    main()
