"""Evaluate a DPO policy against its SFT model on held-out prompts, with the training reward and
independent judges.

    python -m training.eval --sft MODEL_A --policy MODEL_B --output REPORT_DIR [--config F] [key=value ...]
    python -m training.eval --sft builtin:smollm2-135m-instruct --policy outputs/default/policy \
        --output outputs/default/eval generation.k=4 'prompts=[{source: builtin:mt_bench}]'

Default prompts: MT-Bench's 80 first turns and AlpacaEval's held-out bucket (both read from installed
packages). Both models are sampled with the same per-prompt seeds (generation.Sampler, vLLM) and every
response is scored by each scorer (rewarding.Scorer): `scorer`, the training reward, and every one of
`judges`. Per scorer and prompt the policy's mean reward over its k responses is compared with the
SFT's: a win, a tie or a loss. A scorer whose model is the one that scored the policy's training pairs
(found through the policy's manifest) is marked so: its win rate measures optimisation pressure as
much as improvement. REPORT_DIR receives

    report.json        `scorers`: per scorer its model, whether it produced the training pairs, and its
                       pair accuracy on reference-vs-corrupted pairs of held-out prompts;
                       `length`: mean response tokens of both models and the change, per prompt set;
                       `results`: per scorer and prompt set (and overall) the win rate (ties count half)
                       with a bootstrap interval, the length-controlled win rate (training/stats.py
                       lc_win_rate) with a bootstrap interval, the decisive-only win rate with a Wilson
                       interval, mean rewards and the mean change; `warnings`
    rewards.png        reward distributions, one row per scorer, one panel per prompt set
    scores-SCORER-{sft,policy}/   the scored samples, shard folders (data/shard-00000.parquet,
                                  rewarding/schema.py SCORED_SCHEMA)
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

from generation.schema import ERROR, NUM_TOKENS, PROMPT_ID, SOURCE
from rewarding.config import RewardingConfig
from rewarding.judge import heldout_pairs, pair_accuracy
from rewarding.schema import REWARD_MEAN, REWARDS, SCORED_SCHEMA
from rsdpo import storage
from rsdpo.assets import model_identity, resolve_model
from rsdpo.cli import config_help, exits_2_on_input_error
from rsdpo.logs import add_log_level, map_in_steps, progress_bar, setup_logging
from rsdpo.manifest import read_manifest, write_manifest
from rsdpo.shards import shard_name, shard_path, write_shard
from training.config import EvaluationConfig
from training.stats import bootstrap_ci, lc_win_rate, outcomes, wilson_interval

POLICIES = ("sft", "policy")


def load_eval_prompts(config: EvaluationConfig) -> tuple[pa.Table, dict[str, str]]:
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


def sample(config: EvaluationConfig, models: dict[str, Path], prompts: pa.Table, make_sampler: Callable) -> dict[str, pa.Table]:
    """Samples of each model. One vLLM engine at a time (each is freed before the next loads)."""
    samples = {}
    for name, path in models.items():
        sampler = make_sampler(config.generation.model_copy(update={"model": str(path), "seed": config.seed}))
        with progress_bar(prompts.num_rows, f"sample {name}") as bar:
            samples[name] = sampler(prompts, progress=bar.update)
        if hasattr(sampler, "close"):
            sampler.close()
        del sampler
        gc.collect()  # the vLLM engine (and its reserved KV-cache memory) goes with the last reference
    return samples


def scorer_names(config: EvaluationConfig) -> dict[str, RewardingConfig]:
    """{name: scorer config}: "reward" (the training reward), then each judge by its model's name."""
    named = {"reward": config.rewarding}
    for judge in config.judges:
        base = Path(judge.model.removeprefix("builtin:")).name or "judge"
        name, n = base, 2
        while name in named:
            name, n = f"{base}-{n}", n + 1
        named[name] = judge
    return named


def training_reward_identity(policy: Path) -> dict | None:
    """The reward model identity recorded by the pairs the policy was trained on (policy manifest ->
    its input pairs folder's manifest, as the pipeline writes it, or the scored manifest that
    `python -m pairing` copies into it), or None when that chain of manifests is not there."""
    pairs = (read_manifest(policy) or {}).get("input")
    made = read_manifest(Path(pairs)) or {} if pairs else {}
    for record in (made, made.get("upstream_manifest") or {}):
        if (reward := (record.get("models") or {}).get("reward")) is not None:
            return reward
    return None


def _per_prompt(table: pa.Table, column: str) -> dict[str, float]:
    """{prompt_id: value} of the rows without an error: reward_mean, or mean tokens of the k responses."""
    ids, errs = table.column(PROMPT_ID).to_pylist(), table.column(ERROR).to_pylist()
    vals = (table.column(REWARD_MEAN).to_pylist() if column == REWARD_MEAN else
            [float(np.mean(n)) if n else None for n in table.column(NUM_TOKENS).to_pylist()])
    return {p: v for p, v, e in zip(ids, vals, errs, strict=True) if e is None and v is not None}


def _groups(set_of: dict[str, str]) -> dict[str, list[str]]:
    return {"overall": list(set_of)} | {s: [p for p, g in set_of.items() if g == s]
                                         for s in dict.fromkeys(set_of.values())}


def compare(config: EvaluationConfig, scored: dict[str, pa.Table], set_of: dict[str, str]) -> dict[str, Any]:
    """Per prompt set and overall, one scorer: win rate, length-controlled win rate, intervals, mean
    rewards. Prompts where either model's row errored are left out of the comparison and counted."""
    means = {name: _per_prompt(table, REWARD_MEAN) for name, table in scored.items()}
    tokens = {name: _per_prompt(table, NUM_TOKENS) for name, table in scored.items()}
    ci = functools.partial(bootstrap_ci, confidence=config.confidence, n_resamples=config.bootstrap,
                           seed=config.seed)
    report = {}
    for group, pids in _groups(set_of).items():
        both = [p for p in pids if p in means["sft"] and p in means["policy"]]
        sft = np.array([means["sft"][p] for p in both])        # (n,) mean reward of the SFT's k responses
        policy = np.array([means["policy"][p] for p in both])  # (n,) same for the trained policy
        longer = np.array([tokens["policy"][p] - tokens["sft"][p] for p in both])  # (n,) mean tokens, policy - SFT
        out = outcomes(policy, sft)
        wins, ties = int((out == 1).sum()), int((out == 0.5).sum())
        decisive = len(both) - ties
        lc = np.stack([out, longer], -1)                       # (n, 2) outcome, length difference
        report[group] = {
            "prompts": len(pids),
            "compared": len(both),
            "errors": len(pids) - len(both),
            "wins": wins, "ties": ties, "losses": decisive - wins,
            "win_rate": float(out.mean()) if len(both) else None,
            "win_rate_ci": ci(out),
            "win_rate_lc": float(lc_win_rate(lc)) if len(both) else None,
            "win_rate_lc_ci": ci(lc, stat=lc_win_rate),
            "win_rate_decisive": wins / decisive if decisive else None,
            "win_rate_decisive_wilson_ci": wilson_interval(wins, decisive, config.confidence),
            "reward_sft_mean": float(sft.mean()) if len(both) else None,
            "reward_policy_mean": float(policy.mean()) if len(both) else None,
            "reward_change_mean": float((policy - sft).mean()) if len(both) else None,
            "reward_change_ci": ci(policy - sft),
        }
    return report


def lengths(config: EvaluationConfig, samples: dict[str, pa.Table], set_of: dict[str, str]) -> dict[str, Any]:
    """Per prompt set and overall: mean response tokens of SFT and policy (per prompt, the mean of its
    k responses) and the mean change with a bootstrap interval, over prompts both sampled cleanly."""
    tokens = {name: _per_prompt(table, NUM_TOKENS) for name, table in samples.items()}
    report = {}
    for group, pids in _groups(set_of).items():
        both = [p for p in pids if p in tokens["sft"] and p in tokens["policy"]]
        sft = np.array([tokens["sft"][p] for p in both])
        policy = np.array([tokens["policy"][p] for p in both])
        report[group] = {
            "compared": len(both),
            "tokens_sft_mean": float(sft.mean()) if len(both) else None,
            "tokens_policy_mean": float(policy.mean()) if len(both) else None,
            "tokens_change_mean": float((policy - sft).mean()) if len(both) else None,
            "tokens_change_ci": bootstrap_ci(policy - sft, confidence=config.confidence,
                                             n_resamples=config.bootstrap, seed=config.seed),
        }
    return report


def plot(scored: dict[str, dict[str, pa.Table]], set_of: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(set_of.values()))
    fig, axes = plt.subplots(len(scored), len(sets), figsize=(5 * len(sets), 3.4 * len(scored)), squeeze=False)
    for ax_row, (scorer, tables) in zip(axes, scored.items(), strict=True):
        for ax, s in zip(ax_row, sets, strict=True):
            rewards = {}
            for name in POLICIES:
                t = tables[name]
                keep = [set_of.get(p) == s and e is None for p, e in
                        zip(t.column(PROMPT_ID).to_pylist(), t.column(ERROR).to_pylist(), strict=True)]
                rewards[name] = [r for rs, k in zip(t.column(REWARDS).to_pylist(), keep, strict=True) if k
                                 for r in rs]
            both = rewards["sft"] + rewards["policy"]
            bins = np.histogram_bin_edges(both, bins=30) if both else 30  # shared bins: comparable bars
            for name, color in zip(POLICIES, ("tab:gray", "tab:blue"), strict=True):
                if rewards[name]:
                    ax.hist(rewards[name], bins=bins, alpha=0.55, color=color,
                            label=f"{name} (mean {np.mean(rewards[name]):.3f}, n={len(rewards[name])})")
            ax.set_title(f"{s}: {scorer}")
            ax.set_xlabel(f"{scorer} score (every response)")
            ax.legend(fontsize=8)
        ax_row[0].set_ylabel("responses")
    fig.tight_layout()
    storage.write_figure(path, fig, dpi=110)
    plt.close(fig)


def evaluate(config: EvaluationConfig, sft: str, policy: str, output: str | Path, *,
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
    samples = sample(config, models, prompts, make_sampler)
    trained_with = training_reward_identity(models["policy"])
    check = heldout_pairs(config.judge_check_prompts) if config.judge_check_prompts else []
    scorers, scored, identities = {}, {}, {}
    for name, scfg in scorer_names(config).items():
        scorer = make_scorer(scfg)
        scored[name] = {}
        for m, table in samples.items():
            with progress_bar(table.num_rows, f"score {m} ({name})") as bar:
                scored[name][m] = map_in_steps(scorer, table, bar)
        identities[name] = model_identity(scorer.model_path)
        same = None if trained_with is None else identities[name]["sha256"] == trained_with.get("sha256")
        scorers[name] = {"backend": scfg.backend.value, "model": scfg.model, "sha256": identities[name]["sha256"],
                         "produced_training_pairs": same,
                         "pair_accuracy": pair_accuracy(scorer, check) if check else None}
        del scorer
        gc.collect()
    warnings = []
    if not any(s["produced_training_pairs"] is False for s in scorers.values()):
        warnings.append("no scorer here is known to be independent of the training pairs: every win rate below "
                        "may measure optimisation pressure on the training reward as much as improvement; add "
                        "an evaluation.judges entry that never scored training data")
    report = {"scorers": scorers, "length": lengths(config, samples, set_of),
              "results": {name: compare(config, tables, set_of) for name, tables in scored.items()},
              "warnings": warnings}
    out.mkdir(parents=True, exist_ok=True)
    for name, tables in scored.items():
        for m, table in tables.items():
            write_shard(table, shard_path(out / f"scores-{name}-{m}", shard_name(0)), SCORED_SCHEMA)
    plot(scored, set_of, out / "rewards.png")
    storage.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")  # atomic: a resumed chain reuses it
    write_manifest(out, {
        "stage": "training.eval",
        "config": config.model_dump(mode="json"),
        "models": {name: model_identity(p) for name, p in models.items()} | identities
        | {"training_reward": trained_with},
        "counts": {"prompts": prompts.num_rows, "by_set": dict(Counter(set_of.values())),
                   "by_source": dict(Counter(prompts.column(SOURCE).to_pylist())),
                   "judge_check_pairs": len(check)},
        "report": report,
    })
    return report


def summary(report: dict[str, Any]) -> list[str]:
    """Lines naming, for every number, the scorer that produced it and whether it scored the training pairs."""
    produced = {True: "produced the training pairs", False: "independent: never scored the training pairs",
                None: "unknown whether it produced the training pairs"}
    lines = []
    for name, s in report["scorers"].items():
        o = report["results"][name]["overall"]
        if not o["compared"]:
            continue
        acc = s["pair_accuracy"]
        lines.append(
            f"{name} ({s['model']}; {produced[s['produced_training_pairs']]}): win rate {o['win_rate']:.3f} "
            f"[{o['win_rate_ci'][0]:.3f}, {o['win_rate_ci'][1]:.3f}], length-controlled {o['win_rate_lc']:.3f} "
            f"[{o['win_rate_lc_ci'][0]:.3f}, {o['win_rate_lc_ci'][1]:.3f}] over {o['compared']} prompts; "
            + (f"held-out pair accuracy {acc['accuracy']:.3f} ({acc['pairs']} pairs: "
               + ", ".join(f"{k} {v:.2f}" for k, v in acc["by_kind"].items()) + ")" if acc else
               "pair accuracy not measured"))
    n = report["length"]["overall"]
    if n["compared"]:
        lines.append(f"length: SFT {n['tokens_sft_mean']:.1f} tokens, policy {n['tokens_policy_mean']:.1f} "
                     f"({n['tokens_change_mean']:+.1f} [{n['tokens_change_ci'][0]:+.1f}, "
                     f"{n['tokens_change_ci'][1]:+.1f}])")
    return lines + [f"WARNING: {w}" for w in report["warnings"]]


def _rate(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "n/a"
    lo, hi = r[f"{key}_ci"]
    return f"{100 * r[key]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def results_table(rows: list[dict], title: str, label: str, note: str) -> str:
    """Markdown: the scorers (model, whether they scored the training pairs, held-out pair accuracy), then
    one line per row ({label, pairs, dpo_steps, length, results: {scorer: overall}, scorers}) with
    each scorer's win rate and length-controlled win rate and their 95% bootstrap intervals."""
    scorers = list(rows[0]["scorers"]) if rows else []
    produced = {True: "scored the training pairs", False: "independent (never scored training pairs)",
                None: "unknown"}
    lines = [f"# {title}", "",
             f"{note} Win rate (ties half) and length-controlled win rate (AlpacaEval 2 style) with "
             "95% bootstrap intervals, per scorer.", "",
             "| scorer | model | role | held-out pair accuracy |", "|---|---|---|---:|"]
    for name in scorers:
        s = rows[0]["scorers"][name]
        acc = s["pair_accuracy"]
        lines.append(f"| {name} | `{s['model']}` | {produced[s['produced_training_pairs']]} | "
                     f"{acc['accuracy']:.3f} ({acc['pairs']} pairs) |" if acc else
                     f"| {name} | `{s['model']}` | {produced[s['produced_training_pairs']]} | n/a |")
    head = [label, "pairs", "DPO steps", "tokens baseline -> policy"]
    for name in scorers:
        head += [f"{name} win rate", f"{name} LC win rate"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        n = row["length"]
        cells = [row["label"], str(row["pairs"]), str(row["dpo_steps"]),
                 f"{n['tokens_sft_mean']:.1f} -> {n['tokens_policy_mean']:.1f}" if n["compared"] else "n/a"]
        for name in scorers:
            r = row["results"][name]
            cells += [_rate(r, "win_rate"), _rate(r, "win_rate_lc")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict], path: Path, title: str) -> None:
    """One panel per scorer: each row's win rate and length-controlled win rate with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers = list(rows[0]["results"]) if rows else []
    fig, axes = plt.subplots(1, max(1, len(scorers)), figsize=(4.5 * max(1, len(scorers)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], scorers, strict=False):
        for shift, key, color in ((-0.12, "win_rate", "tab:blue"), (0.12, "win_rate_lc", "tab:orange")):
            xs, ys, err = [], [], [[], []]
            for i, row in enumerate(rows):
                r = row["results"][name]
                if r.get(key) is not None:
                    xs.append(i + shift)
                    ys.append(r[key])
                    err[0].append(r[key] - r[f"{key}_ci"][0])
                    err[1].append(r[f"{key}_ci"][1] - r[key])
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=color, capsize=4,
                        label="win rate" if key == "win_rate" else "length-controlled")
        ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(rows)), [row["label"] for row in rows], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}, scored by {name}")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("win rate (95% bootstrap interval)")
    fig.tight_layout()
    storage.write_figure(path, fig, dpi=110)
    plt.close(fig)


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cluster.config import stage_config  # a run config is validated whole (entry points only)

    ap = argparse.ArgumentParser(description=__doc__, epilog=config_help({"": EvaluationConfig}),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="the SFT model (the DPO reference): folder or builtin:")
    ap.add_argument("--policy", required=True, help="the trained policy folder (python -m training --output)")
    ap.add_argument("--output", required=True, help="report folder")
    ap.add_argument("--config", help="YAML: an evaluation config, or a run config (its `evaluation:` section; the run is validated whole)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting (generation.k=4)")
    add_log_level(ap)
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    config = stage_config("evaluation", args.config, args.overrides)
    report = evaluate(config, args.sft, args.policy, args.output)
    if not report["results"]["reward"]["overall"]["compared"]:
        print(f"[training.eval] no prompt could be compared ({report['results']['reward']['overall']['errors']} "
              f"errors); see {args.output}", file=sys.stderr)
        return 1
    for line in summary(report):
        print(f"[training.eval] {line}")
    print(f"[training.eval] report in {args.output}/report.json")
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: the guard is required
    sys.exit(main())
