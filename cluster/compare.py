"""Pairing strategies side by side: one data job, several pair sets from its cached scored shards, a
DPO policy per distinct pair set (the same number of steps and the same seed for all), each evaluated
against the SFT policy with the training reward and the independent judge(s).

    python -m cluster.compare --config cluster/configs/default.yaml [--strategies rs-dpo,best-worst,best-random] \
        [key=value ...]
    make compare

<output_dir>/round-1/{scored,pairs}/   the data job, the same one as the chain's first round
                              (`make run` first and compare samples and scores nothing again)
OUT = <output_dir>/compare:
    STRATEGY/pairs/           the cached scored shards re-paired with STRATEGY (rs-dpo keeps the run's
                              eta / tau / cap; the others keep the cap and the training-length check)
    policies/KEY/{policy,eval}/  one DPO run and one evaluation per distinct pair set: strategies whose
                              pairs are identical (same prompt, chosen and rejected, same order) share them
    compare.json, compare.md, compare.png   the table (per strategy and scorer: win rate and
                              length-controlled win rate with intervals) and the plot

Every step resumes: committed shards are skipped, a trained policy or a written report is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

from cluster.config import RunConfig
from pairing.config import Strategy
from pairing.schema import CHOSEN_INDEX, PAIRS_SCHEMA, PROMPT_ID, REJECTED_INDEX
from rsdpo import storage
from rsdpo.cli import ConfigError, load_config
from rsdpo.manifest import read_manifest, write_manifest
from rsdpo.shards import list_shards, read_shard

DEFAULT_STRATEGIES = (Strategy.RS_DPO, Strategy.BEST_WORST, Strategy.BEST_RANDOM)


def pairs_key(pairs_dir: Path, training: dict) -> str:
    """Identity of a DPO run: the pairs (prompt, chosen and rejected response, in file order) and the
    training config. Equal keys train the same policy, so it is trained once."""
    h = hashlib.sha256(json.dumps(training, sort_keys=True).encode())
    for path in list_shards(pairs_dir):
        t = read_shard(path, PAIRS_SCHEMA, columns=[PROMPT_ID, CHOSEN_INDEX, REJECTED_INDEX])
        h.update(storage.basename(path).encode())
        h.update(json.dumps([t.column(c).to_pylist() for c in t.column_names]).encode())
    return h.hexdigest()[:16]


def dpo_steps(cfg: RunConfig, pairs: int) -> int:
    """The DPO steps every strategy gets: training.dpo.max_steps when set, else one epoch over the
    configured strategy's pairs."""
    dpo = cfg.training.dpo_kwargs()
    if dpo.get("max_steps", -1) > 0:
        return int(dpo["max_steps"])
    per_step = dpo["per_device_train_batch_size"] * dpo["gradient_accumulation_steps"] * cfg.training.num_workers
    return max(1, math.ceil(pairs * dpo.get("num_train_epochs", 1) / per_step))


def compare(cfg: RunConfig, strategies: list[Strategy], *, fresh: bool = False) -> dict:
    from cluster.pipeline import run_pipeline
    from cluster.session import connect
    from cluster.train import train_on_ray
    from pairing.__main__ import run as pair
    from training.eval import evaluate, plot_results, results_table, summary
    from training.train import check_dpo_keys

    check_dpo_keys(cfg.training)
    out = Path(cfg.out) / "compare"  # local: the policies it trains are model folders
    data_dir = Path(cfg.out) / "round-1"  # where the chain's first round samples and scores: shared with make run
    data_cfg = cfg.model_copy(deep=True, update={"output_dir": str(data_dir), "training": None,
                                                 "evaluation": None, "rounds": 1})
    data = run_pipeline(data_cfg, fresh=fresh)
    sft = cfg.generation.model

    pair_sets = {}
    for strategy in strategies:
        pcfg = cfg.pairing.model_copy(update={"strategy": strategy})
        pair_sets[strategy] = pair(str(data_dir / "scored"), str(out / strategy.value / "pairs"), pcfg)
    configured = pair_sets.get(cfg.pairing.strategy) or next(iter(pair_sets.values()))
    steps = dpo_steps(cfg, configured["pairs"])
    tcfg = cfg.training.model_copy(deep=True)
    tcfg.model, tcfg.reference_model = sft, sft
    tcfg.dpo = {**tcfg.dpo, "max_steps": steps}

    rows = []
    for strategy, stats in pair_sets.items():
        pairs_dir = out / strategy.value / "pairs"
        if not stats["pairs"]:
            print(f"[rsdpo] compare: {strategy}: no pairs, nothing to train (see {pairs_dir}/manifest.json)",
                  file=sys.stderr, flush=True)
            continue
        key = pairs_key(pairs_dir, tcfg.model_dump(mode="json"))
        run_dir = out / "policies" / key
        policy = run_dir / "policy"
        done = read_manifest(policy)
        if done is None or not (policy / "config.json").exists():
            connect(cfg.resources.num_cpus)
            print(f"[rsdpo] compare: {strategy}: DPO on {stats['pairs']} pairs, {steps} steps -> {policy}",
                  flush=True)
            done = train_on_ray(tcfg, pairs_dir, policy, run_name=f"compare-{key}")
        else:
            print(f"[rsdpo] compare: {strategy}: reusing {policy} (same pairs and training config)", flush=True)
        report_file = run_dir / "eval" / "report.json"
        report = json.loads(storage.read_text(report_file)) if storage.exists(report_file) else {}
        if "results" not in report:
            print(f"[rsdpo] compare: {strategy}: evaluating {policy} against {sft}", flush=True)
            report = evaluate(cfg.evaluation, sft, str(policy), run_dir / "eval")
        for line in summary(report):
            print(f"[rsdpo] compare: {strategy}: {line}", flush=True)
        rows.append({"label": strategy.value, "strategy": strategy.value, "pairs": stats["pairs"],
                     "prompts_with_pairs": stats["prompts_with_pairs"], "dpo_steps": done["metrics"]["global_step"],
                     "policy": str(policy), "report": str(report_file), "scorers": report["scorers"],
                     "length": report["length"]["overall"],
                     "results": {name: r["overall"] for name, r in report["results"].items()},
                     "warnings": report["warnings"]})
    result = {"config": cfg.model_dump(mode="json"), "data": data["counts"], "dpo_steps": steps, "rows": rows}
    write_manifest(out, {"stage": "compare", **result})
    storage.write_text(out / "compare.json", json.dumps(result, indent=2, default=str) + "\n")
    storage.write_text(out / "compare.md", results_table(
        rows, "Pairing strategies vs SFT", "strategy",
        "Same scored shards, same DPO steps and seed; each policy against the SFT policy."))
    plot_results(rows, out / "compare.png", "vs SFT")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run config YAML with training and evaluation sections")
    ap.add_argument("--strategies", default=",".join(s.value for s in DEFAULT_STRATEGIES),
                    help="comma-separated pairing strategies")
    ap.add_argument("--fresh", action="store_true", help="discard shards of an earlier, different data job")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(RunConfig, args.config, args.overrides)
        strategies = [Strategy(s.strip()) for s in args.strategies.split(",") if s.strip()]
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.training is None or cfg.evaluation is None:
        print("error: compare needs `training:` and `evaluation:` sections in the run config", file=sys.stderr)
        return 2
    result = compare(cfg, strategies, fresh=args.fresh)
    print(storage.read_text(Path(cfg.out) / "compare" / "compare.md"))
    print(f"[rsdpo] compare: table in {Path(cfg.out) / 'compare'}/compare.{{md,json}}, plot compare.png; "
          f"{len({r['policy'] for r in result['rows']})} policies trained for {len(result['rows'])} strategies")
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: the guard is required
    sys.exit(main())
