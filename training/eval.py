"""Evaluate a DPO policy against its SFT model on held-out prompts, with one reward model.

    python -m training.eval --sft MODEL_A --policy MODEL_B --output REPORT_DIR [--config F] [key=value ...]
    python -m training.eval --sft builtin:smollm2-135m-instruct --policy outputs/default/policy \
        --output outputs/default/eval sampler.k=4 'prompts=[{source: builtin:mt_bench}]'

Default prompts: MT-Bench's 80 first turns and AlpacaEval's held-out bucket (both read from installed
packages). Both models are sampled with the same per-prompt seeds (generation.Sampler, vLLM) and every
response is scored by the same reward model (rewarding.Scorer). Per prompt the policy's mean reward
over its k responses is compared with the SFT's: a win, a tie or a loss. REPORT_DIR receives

    report.json        per prompt set and overall: win rate (ties count half) with a bootstrap interval,
                       the decisive-only win rate with a Wilson interval, mean rewards and the mean
                       change with a bootstrap interval, error counts
    rewards.png        both reward distributions, one panel per prompt set
    samples-sft.parquet, samples-policy.parquet   the scored samples (rewarding/schema.py SCORED_SCHEMA)
    manifest.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from common.assets import model_identity, resolve_model
from common.cli import config_help, exits_2_on_input_error
from common.manifest import write_manifest
from common.shards import write_shard
from generation.schema import ERROR, PROMPT_ID, SOURCE
from rewarding.schema import REWARD_MEAN, REWARDS, SCORED_SCHEMA
from training.config import EvalConfig
from training.stats import bootstrap_ci, outcomes, wilson_interval

POLICIES = ("sft", "policy")


def load_eval_prompts(config: EvalConfig) -> tuple[pa.Table, dict[str, str]]:
    """All prompt sets as one PROMPTS table + {prompt_id: set name}. Rejected rows raise: a benchmark
    set that does not load cleanly is a broken install, not data to skip."""
    from generation.prompts import load_prompts

    tables, set_of = [], {}
    for pc in config.prompts:
        loaded = load_prompts(pc)
        if loaded.rejects:
            raise ValueError(f"{pc.source}: {len(loaded.rejects)} prompt rows rejected, first: "
                             f"{loaded.rejects[0]['reason']}")
        name = pc.source.removeprefix("builtin:") + (f"/{pc.split.value}" if pc.split.value != "all" else "")
        for pid in loaded.table.column(PROMPT_ID).to_pylist():
            if pid in set_of:
                raise ValueError(f"prompt_id {pid!r} appears in two prompt sets ({set_of[pid]}, {name})")
            set_of[pid] = name
        tables.append(loaded.table)
    return pa.concat_tables(tables), set_of


def sample_and_score(config: EvalConfig, models: dict[str, Path], prompts: pa.Table,
                     make_sampler: Callable, make_scorer: Callable) -> dict[str, pa.Table]:
    """Scored samples of each model. One vLLM engine at a time (each is freed before the next loads)."""
    samples = {}
    for name, path in models.items():
        sampler = make_sampler(config.sampler.model_copy(update={"model": str(path), "seed": config.seed}))
        samples[name] = sampler(prompts)
        if hasattr(sampler, "close"):
            sampler.close()
        del sampler
        gc.collect()  # the vLLM engine (and its reserved KV-cache memory) goes with the last reference
    scorer = make_scorer(config.scorer)
    return {name: scorer(table) for name, table in samples.items()}


def compare(config: EvalConfig, scored: dict[str, pa.Table], set_of: dict[str, str]) -> dict[str, Any]:
    """Per prompt set and overall: win rate, intervals, mean rewards. Prompts where either model's row
    errored are left out of the comparison and counted."""
    means = {}
    for name, table in scored.items():
        ids = table.column(PROMPT_ID).to_pylist()
        ok = [e is None for e in table.column(ERROR).to_pylist()]
        means[name] = {pid: m for pid, m, good in zip(ids, table.column(REWARD_MEAN).to_pylist(), ok, strict=True)
                       if good and m is not None}
    groups = {"overall": list(set_of)} | {s: [p for p, g in set_of.items() if g == s]
                                           for s in dict.fromkeys(set_of.values())}
    report = {}
    for group, pids in groups.items():
        both = [p for p in pids if p in means["sft"] and p in means["policy"]]
        sft = np.array([means["sft"][p] for p in both])        # (n,) mean reward of the SFT's k responses
        policy = np.array([means["policy"][p] for p in both])  # (n,) same for the trained policy
        out = outcomes(policy, sft)
        wins, ties = int((out == 1).sum()), int((out == 0.5).sum())
        decisive = len(both) - ties
        report[group] = {
            "prompts": len(pids),
            "compared": len(both),
            "errors": len(pids) - len(both),
            "wins": wins, "ties": ties, "losses": decisive - wins,
            "win_rate": float(out.mean()) if len(both) else None,
            "win_rate_ci": bootstrap_ci(out, confidence=config.confidence, n_resamples=config.bootstrap,
                                        seed=config.seed),
            "win_rate_decisive": wins / decisive if decisive else None,
            "win_rate_decisive_wilson_ci": wilson_interval(wins, decisive, config.confidence),
            "reward_sft_mean": float(sft.mean()) if len(both) else None,
            "reward_policy_mean": float(policy.mean()) if len(both) else None,
            "reward_change_mean": float((policy - sft).mean()) if len(both) else None,
            "reward_change_ci": bootstrap_ci(policy - sft, confidence=config.confidence,
                                             n_resamples=config.bootstrap, seed=config.seed),
        }
    return report


def plot(scored: dict[str, pa.Table], set_of: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(set_of.values()))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        rewards = {}
        for name in POLICIES:
            t = scored[name]
            keep = [set_of.get(p) == s and e is None for p, e in
                    zip(t.column(PROMPT_ID).to_pylist(), t.column(ERROR).to_pylist(), strict=True)]
            rewards[name] = [r for rs, k in zip(t.column(REWARDS).to_pylist(), keep, strict=True) if k for r in rs]
        both = rewards["sft"] + rewards["policy"]
        bins = np.histogram_bin_edges(both, bins=30) if both else 30  # shared bins: comparable bars
        for name, color in zip(POLICIES, ("tab:gray", "tab:blue"), strict=True):
            if rewards[name]:
                ax.hist(rewards[name], bins=bins, alpha=0.55, color=color,
                        label=f"{name} (mean {np.mean(rewards[name]):.3f}, n={len(rewards[name])})")
        ax.set_title(s)
        ax.set_xlabel("reward (every response)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("responses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(config: EvalConfig, sft: str, policy: str, output: str | Path, *,
             make_sampler: Callable | None = None, make_scorer: Callable | None = None) -> dict[str, Any]:
    """Run the evaluation and write REPORT_DIR. `make_sampler` / `make_scorer` default to the real
    generation.sampler.Sampler and rewarding.scorer.Scorer (tests pass deterministic fakes)."""
    if make_sampler is None:
        from generation.sampler import Sampler

        # one engine at a time and nothing beside it: on CPU it may use every core
        make_sampler = functools.partial(Sampler, exclusive_cpu=True)
    if make_scorer is None:
        from rewarding.scorer import Scorer as make_scorer
    out = Path(output)
    models = {"sft": resolve_model(sft), "policy": resolve_model(policy)}
    prompts, set_of = load_eval_prompts(config)
    scored = sample_and_score(config, models, prompts, make_sampler, make_scorer)
    report = compare(config, scored, set_of)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in scored.items():
        write_shard(table, out / f"samples-{name}.parquet", SCORED_SCHEMA)
    plot(scored, set_of, out / "rewards.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_manifest(out, {
        "stage": "training.eval",
        "config": config.model_dump(mode="json"),
        "models": {name: model_identity(p) for name, p in models.items()}
        | {"reward": model_identity(resolve_model(config.scorer.model))},
        "counts": {"prompts": prompts.num_rows, "by_set": dict(Counter(set_of.values())),
                   "by_source": dict(Counter(prompts.column(SOURCE).to_pylist()))},
        "report": report,
    })
    return report


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cluster.config import stage_config  # a run config is validated whole (entry points only)

    ap = argparse.ArgumentParser(description=__doc__, epilog=config_help({"": EvalConfig}),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="the SFT model (the DPO reference): folder or builtin:")
    ap.add_argument("--policy", required=True, help="the trained policy folder (python -m training --output)")
    ap.add_argument("--output", required=True, help="report folder")
    ap.add_argument("--config", help="YAML: an evaluation config, or a run config (its `evaluation:` section; the run is validated whole)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting (sampler.k=4)")
    args = ap.parse_args(argv)
    config = stage_config("evaluation", args.config, args.overrides)
    report = evaluate(config, args.sft, args.policy, args.output)
    o = report["overall"]
    if not o["compared"]:
        print(f"[training.eval] no prompt could be compared ({o['errors']} errors); see {args.output}",
              file=sys.stderr)
        return 1
    print(f"[training.eval] win rate {o['win_rate']:.3f} (CI {o['win_rate_ci'][0]:.3f}-{o['win_rate_ci'][1]:.3f}) "
          f"over {o['compared']} prompts; mean reward change {o['reward_change_mean']:+.4f}; "
          f"report in {args.output}/report.json")
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: the guard is required
    sys.exit(main())
