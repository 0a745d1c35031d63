"""Dataset card (README.md) for a pairs folder: what made it, counts, schema, how to load it.

Written by `python -m pairing`; the cluster pipeline calls write_card after its pairs sink too.
Adds reward_spread.png (per-prompt max - min reward) when matplotlib is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.manifest import read_manifest
from common.shards import list_shards
from generation.schema import ERROR, PROMPT, PROMPT_ID
from pairing import rules
from pairing.config import PairingConfig, Strategy
from pairing.schema import (
    CHOSEN,
    CHOSEN_INDEX,
    CHOSEN_REWARD,
    PAIRS_SCHEMA,
    REJECTED,
    REJECTED_INDEX,
    REJECTED_REWARD,
    STRATEGY,
)
from rewarding.schema import REWARDS

CARD = "README.md"
SPREAD_PLOT = "reward_spread.png"

COLUMN_MEANING = {
    PROMPT: "the conversation so far, a list of {role, content}; the last turn is the user's",
    CHOSEN: 'the preferred reply, one assistant turn: [{"role": "assistant", "content": text}]',
    REJECTED: "the dispreferred reply, same shape as chosen (never the same text)",
    PROMPT_ID: "stable id of the prompt the pair came from (joins back to the scored shards)",
    CHOSEN_REWARD: "raw reward-model score of the chosen reply",
    REJECTED_REWARD: "raw reward-model score of the rejected reply (always < chosen_reward)",
    CHOSEN_INDEX: "index of the chosen reply among the prompt's k samples",
    REJECTED_INDEX: "index of the rejected reply among the prompt's k samples",
    STRATEGY: "pairing strategy that emitted the pair",
}


def _source_dirs(sources: list) -> list[Path]:
    dirs = []
    for s in sources:
        p = Path(s)
        d = p if p.is_dir() else p.parent
        if d not in dirs:
            dirs.append(d)
    return dirs


def _models(node, prefix: str = "", depth: int = 0) -> list[str]:
    """`key: value` lines for every manifest entry whose key mentions a model (two levels deep)."""
    lines = []
    if isinstance(node, dict) and depth < 3:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if "model" in str(key).lower():
                lines.append(f"- `{name}`: `{json.dumps(value, default=str)}`")
            elif isinstance(value, dict):
                lines.extend(_models(value, f"{name}.", depth + 1))
    return lines


def _spreads_from(sources: list) -> np.ndarray:
    """max - min reward of every error-free scored row under `sources` (the card's fallback)."""
    spreads = []
    for source in sources:
        try:
            paths = list_shards(source)
        except FileNotFoundError:
            continue
        for path in paths:
            table = pq.read_table(path, columns=[REWARDS, ERROR])
            ok = table.filter(pc.is_null(table.column(ERROR))).column(REWARDS)
            for rewards in ok.to_pylist():
                if rewards and all(np.isfinite(rewards)):
                    spreads.append(max(rewards) - min(rewards))
    return np.array(spreads)


def _plot_spreads(path: Path, spreads: np.ndarray, config: PairingConfig) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(spreads, bins=min(50, max(5, len(spreads) // 5)), color="tab:blue", alpha=0.8)
    if config.strategy == Strategy.RS_DPO:
        ax.axvline(rules.raw_threshold(config.tau, config.eta), color="tab:red", linestyle="--",
                   label=f"tau*ln(eta/(1-eta)) = {rules.raw_threshold(config.tau, config.eta):.3g}")
        ax.legend()
    ax.set_xlabel("per-prompt reward spread (max - min), raw reward units")
    ax.set_ylabel("prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_card(out_dir, config: PairingConfig, stats: dict, sources: list, *,
               spreads: np.ndarray | None = None) -> Path:
    """Write OUT/README.md for a pairs folder made with `config` from the scored `sources` (files or dirs).

    `stats` is make_pairs' (or merge_stats') dict. `spreads` (per-prompt max - min reward) feeds the
    plot; when None they are read from the sources' rewards.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for d in _source_dirs(sources):
        manifest = read_manifest(d)
        if manifest:
            models += [f"{line} (from `{d / 'manifest.json'}`)" for line in _models(manifest)]
    threshold = rules.raw_threshold(config.tau, config.eta)
    settings = {
        Strategy.RS_DPO: f"eta = {config.eta}, tau = {config.tau} (pairs need a raw reward gap > "
                         f"tau * ln(eta / (1 - eta)) = {threshold:.4f})",
        Strategy.ALL_ABOVE_MARGIN: f"margin = {config.margin} (raw reward units)",
        Strategy.SIGMA: f"sigma_c = {config.sigma_c} (rejected nearest mu - sigma_c * sigma)",
        Strategy.BEST_RANDOM: f"seed = {config.seed} (rejected drawn per prompt from (seed, prompt_id))",
        Strategy.BEST_WORST: "argmax vs argmin per prompt",
    }[config.strategy]
    usable = stats.get("prompts_in", 0) - stats.get("prompts_errored", 0)
    counts = [
        ("prompts in", stats.get("prompts_in", 0)),
        ("prompts with >= 1 pair", stats.get("prompts_with_pairs", 0)),
        ("prompts without a pair", stats.get("prompts_without_pairs", usable - stats.get("prompts_with_pairs", 0))),
        ("prompts errored (never paired)", stats.get("prompts_errored", 0)),
        ("pairs", stats.get("pairs", 0)),
        ("pairs per usable prompt", f"{stats.get('pairs', 0) / usable:.2f}" if usable else "n/a"),
        ("candidate ordered pairs evaluated", stats.get("candidates_evaluated", 0)),
        ("responses dropped as duplicates", stats.get("responses_dropped_duplicate", 0)),
        ("responses dropped as truncated", stats.get("responses_dropped_truncated", 0)),
    ]
    lines = [
        "# Preference pairs (RS-DPO data engine)",
        "",
        f"Made by `python -m pairing` with strategy **{config.strategy}**: {settings}.",
        f"Seed {config.seed}; dedup_responses = {config.dedup_responses}; exclude_truncated = "
        f"{config.exclude_truncated}; max_pairs_per_prompt = {config.max_pairs_per_prompt}. "
        "Rows are shuffled within each shard (seeded). The full resolved config is in `manifest.json`.",
        "",
        "## Sources",
        "",
        *[f"- `{s}`" for s in sources],
        "",
        "Models (from the scored input's manifest):" if models else
        "Models: no manifest.json found next to the scored input.",
        *([""] + models if models else []),
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---:|",
        *[f"| {name} | {value} |" for name, value in counts],
        "",
        "## Schema",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        *[f"| `{f.name}` | `{f.type}` | {COLUMN_MEANING.get(f.name, '')} |" for f in PAIRS_SCHEMA],
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("parquet", data_files="{out}/*.parquet", split="train")',
        "# TRL's DPOTrainer reads prompt / chosen / rejected as is (conversational format).",
        "```",
    ]
    if spreads is None:
        spreads = _spreads_from(list(sources))
    if len(spreads) and _plot_spreads(out / SPREAD_PLOT, np.asarray(spreads), config):
        lines += ["", "## Reward spread", "",
                  f"Per-prompt reward spread (max - min over eligible responses), {len(spreads)} prompts; "
                  "a prompt can yield an rs-dpo pair only if its spread exceeds the dashed threshold.",
                  "", f"![reward spread]({SPREAD_PLOT})"]
    path = out / CARD
    path.write_text("\n".join(lines) + "\n")
    return path
