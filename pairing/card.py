"""The one writer of a pairs folder's manifest.json and README.md (a Hub-ready dataset card).

Both the cluster pipeline's finish step and `python -m pairing` call `write_pairs_meta`, so the two
never differ in keys or counts. The counts are not handed in: every pairs shard carries the
make_pairs stats of its own rows in its Parquet footer (`write_pairs_shard`), and the writer sums
those of the shards it is given, so a resumed run counts shards committed by earlier sessions too.

The card is built with huggingface_hub's DatasetCard / DatasetCardData: YAML front matter with
`configs` (data_files relative to the card, where the shards really lie), the features of
PAIRS_SCHEMA, task category, tags, size category and license, then the generation and pairing
settings, the counts, the schema and how to load it. Every path in it is relative to the folder;
models are named by folder name and content hash, never by where they sit on this machine.
Adds reward_spread.png (per-prompt max - min reward) when matplotlib is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from huggingface_hub import DatasetCard, DatasetCardData

from generation.schema import PROMPT, PROMPT_ID
from pairing import rules
from pairing.config import PairingConfig, Strategy
from pairing.pairs import PairingResult, merge_stats
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
from pairing.truncation import Cut
from rsdpo import storage
from rsdpo.manifest import write_manifest
from rsdpo.shards import DATA, hub_configs, shard_metadata, write_shard

CARD = "README.md"
UPSTREAM_SECTIONS = ("prompts", "generation", "rewarding")   # run-config sections that made the scored input
SPREAD_PLOT = "reward_spread.png"
STATS_KEY = b"rsdpo.pairing_stats"   # Parquet footer key of a pairs shard: its make_pairs stats (JSON)
TAGS = ["dpo", "preference", "synthetic", "trl", "rs-dpo"]
# The Hub's size buckets, by upper bound on rows.
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]

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
COUNT_LABELS = {
    "prompts_in": "prompts in", "prompts_with_pairs": "prompts with >= 1 pair",
    "prompts_without_pairs": "prompts without a pair (usable)", "prompts_errored": "prompts errored (never paired)",
    "pairs": "pairs", "candidates_evaluated": "candidate ordered pairs evaluated",
    "responses_in": "responses in", "responses_eligible": "responses eligible",
    "responses_dropped_duplicate": "responses dropped as duplicates",
    "responses_dropped_truncated": "responses dropped as truncated",
    **{f"pairs_dropped_{cut.value}": f"pairs dropped at the training max_length: {cut.value}" for cut in Cut},
    "pairs_chosen_longer": "pairs whose chosen answer is longer (generated tokens)",
    "pairs_length_gap_tokens": "sum of chosen - rejected generated tokens",
}


def write_pairs_shard(result: PairingResult, path: str | Path) -> str:
    """Write make_pairs' pairs to `path`, its stats (errors included) in the shard's footer."""
    stats = json.dumps(result.stats).encode()
    return write_shard(result.pairs, path, PAIRS_SCHEMA.with_metadata({STATS_KEY: stats}))


def read_pairs_stats(shards: list[str]) -> tuple[dict, list[str]]:
    """(the summed stats of `shards`, warnings): a shard without stats in its footer (an older
    version wrote it) is left out of the counts and named in a warning."""
    parts, missing = [], []
    for path in shards:
        raw = shard_metadata(path).get(STATS_KEY)
        if raw is None:
            missing.append(storage.basename(path))
        else:
            parts.append(json.loads(raw))
    merged = merge_stats(parts) if parts else {"errors": [], **{k: 0 for k in COUNT_LABELS}}
    warnings = [f"{len(missing)} pairs shard(s) carry no pairing stats (written by an older version): the counts "
                f"leave them out ({', '.join(missing[:5])})"] if missing else []
    return merged, warnings


def _features(schema: pa.Schema) -> list[dict]:
    """The card's `dataset_info.features`, as `datasets` writes them, from an Arrow schema."""
    def one(t: pa.DataType) -> dict:
        if pa.types.is_list(t):
            inner = one(t.value_type)
            return {"list": inner.get("dtype", inner.get("struct"))}
        if pa.types.is_struct(t):
            return {"struct": [{"name": f.name, **one(f.type)} for f in t]}
        return {"dtype": {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(t), str(t))}
    return [{"name": f.name, **one(f.type)} for f in schema]


def _size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1B")


def _model_line(role: str, identity: dict) -> str:
    name = Path(str(identity.get("path", "?"))).name
    digest = str(identity.get("sha256", ""))[:16]
    return f"- {role}: `{name}`" + (f" (content sha256 {digest}...)" if digest else "")


def _plot_spreads(path: str, spreads: np.ndarray, config: PairingConfig) -> None:
    import matplotlib  # a dependency (pyproject.toml): a missing one is a broken install, not a card without a plot
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(spreads, bins=min(50, max(5, len(spreads) // 5)), color="tab:blue", alpha=0.8)
    if config.strategy == Strategy.RS_DPO:
        threshold = rules.raw_threshold(config.tau, config.eta)
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"tau*ln(eta/(1-eta)) = {threshold:.3g}")
        ax.legend()
    ax.set_xlabel("per-prompt reward spread (max - min), raw reward units")
    ax.set_ylabel("prompts")
    fig.tight_layout()
    storage.write_figure(path, fig)
    plt.close(fig)


def _settings(config: PairingConfig) -> str:
    threshold = rules.raw_threshold(config.tau, config.eta)
    return {
        Strategy.RS_DPO: f"eta = {config.eta}, tau = {config.tau} (pairs need a raw reward gap > "
                         f"tau * ln(eta / (1 - eta)) = {threshold:.4f})",
        Strategy.ALL_ABOVE_MARGIN: f"margin = {config.margin} (raw reward units)",
        Strategy.SIGMA: f"sigma_c = {config.sigma_c} (rejected nearest mu - sigma_c * sigma)",
        Strategy.BEST_RANDOM: f"seed = {config.seed} (rejected drawn per prompt from (seed, prompt_id))",
        Strategy.BEST_WORST: "argmax vs argmin per prompt",
    }[config.strategy]


def write_pairs_meta(out_dir: str | Path, config: PairingConfig, shards: list[str], *, made_by: str,
                     inputs: list[str | Path], models: dict[str, dict], spreads: np.ndarray,
                     upstream: dict[str, Any] | None = None, warnings: list[str] = ()) -> dict:
    """Write OUT/manifest.json and OUT/README.md for the pairs `shards` in OUT; returns the manifest.

    `inputs`: the scored folders or files paired; `models`: {role: model_identity}; `spreads`:
    per-prompt max - min reward (the plot); `upstream`: the run-config sections that made the scored
    input (`prompts`, `generation`, `rewarding`), those known; `warnings` go to both files.
    """
    out = str(out_dir)
    stats, stat_warnings = read_pairs_stats(shards)
    warnings = [*warnings, *stat_warnings]
    counts = {k: stats.get(k, 0) for k in COUNT_LABELS}
    threshold = rules.raw_threshold(config.tau, config.eta)
    rel_inputs = [storage.relative(p, out) for p in inputs]
    manifest = {
        "stage": "pairing", "made_by": made_by,
        "config": {**(upstream or {}), "pairing": config.model_dump(mode="json")},
        "raw_threshold": threshold,
        "raw_threshold_note": "rs-dpo accepts (j, l) iff sigmoid((r_j - r_l)/tau) > eta, "
                              "i.e. r_j - r_l > tau * ln(eta / (1 - eta))",
        "inputs": rel_inputs, "models": models, "counts": counts,
        "shards": [storage.relative(p, out) for p in shards],
        "errors": stats["errors"], "warnings": warnings,
    }
    write_manifest(out, manifest)

    card_data = DatasetCardData(
        pretty_name="RS-DPO preference pairs", license=config.license, task_categories=["text-generation"],
        tags=TAGS, size_categories=[_size_category(counts["pairs"])],
        configs=hub_configs({"default": "."}),
        dataset_info={"features": _features(PAIRS_SCHEMA),
                      "splits": [{"name": "train", "num_examples": counts["pairs"]}]},
    )
    usable = counts["prompts_in"] - counts["prompts_errored"]
    made = upstream or {}
    gen_lines = []
    if (prompts := made.get("prompts")) is not None:
        # builtin sets by name, a file by its name only (never where it sits on this machine)
        source = prompts["source"] if prompts["source"].startswith("builtin:") else storage.basename(prompts["source"])
        gen_lines.append(f"- prompts: `{source}`" + (
            f", subsets {prompts['subsets']}" if prompts.get("subsets") else "") + f", split `{prompts['split']}`"
            + (f", limit {prompts['limit']}" if prompts.get("limit") else ""))
    if (g := made.get("generation")) is not None:
        gen_lines.append(f"- sampling (vLLM): k = {g['k']} responses per prompt, max_tokens = {g['max_tokens']}, "
                         f"temperature = {g['temperature']}, top_p = {g['top_p']}, seed = {g['seed']} (each "
                         f"prompt's seed from (seed, prompt_id))")
    if (r := made.get("rewarding")) is not None:
        gen_lines.append(f"- scoring: backend `{r['backend']}`, max_length = {r['max_length']} tokens")
    lines = [
        "# RS-DPO preference pairs",
        "",
        f"Made by `{made_by}` with strategy **{config.strategy}**: {_settings(config)}. Seed {config.seed}; "
        f"dedup_responses = {config.dedup_responses}; exclude_truncated = {config.exclude_truncated}; "
        f"max_pairs_per_prompt = {config.max_pairs_per_prompt}; pairs checked at the training max_length = "
        f"{config.max_length} (null: not checked). Rows are shuffled within each shard (seeded). "
        "The full resolved config is in `manifest.json`.",
        "",
        "## License",
        "",
        f"`{config.license}` (from the pairing config's `license`). Each row holds a prompt from the prompt "
        "set and responses generated by the policy model, so the prompts' license and the policy's license "
        "(its terms on generated output) carry over to this data: the value above must allow what both allow.",
        "",
        "## Sources",
        "",
        *[f"- scored input: `{p}`" for p in rel_inputs],
        *gen_lines,
        *[_model_line(role, m) for role, m in models.items()],
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---:|",
        *[f"| {COUNT_LABELS[k]} | {v} |" for k, v in counts.items()],
        f"| pairs per usable prompt | {counts['pairs'] / usable:.2f} |" if usable else "| pairs per usable prompt | n/a |",
        *([f"| share of pairs whose chosen answer is longer | {counts['pairs_chosen_longer'] / counts['pairs']:.3f} |",
           f"| mean length gap, chosen - rejected | {counts['pairs_length_gap_tokens'] / counts['pairs']:+.2f} tokens |"]
          if counts["pairs"] else []),
        "",
        *(["## Warnings", "", *[f"- {w}" for w in warnings], ""] if warnings else []),
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
        'ds = load_dataset("path/to/this/folder", split="train")   # the `configs` above pick the shards',
        "# TRL's DPOTrainer reads prompt / chosen / rejected as is (conversational format).",
        f'# any Parquet reader takes the shards as they are: pandas.read_parquet("path/to/this/folder/{DATA}")',
        "```",
    ]
    if len(spreads):
        _plot_spreads(storage.join(out, SPREAD_PLOT), np.asarray(spreads), config)
        lines += ["", "## Reward spread", "",
                  f"Per-prompt reward spread (max - min over eligible responses), {len(spreads)} prompts; "
                  "a prompt can yield an rs-dpo pair only if its spread exceeds the dashed threshold.",
                  "", f"![reward spread]({SPREAD_PLOT})"]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    storage.write_text(storage.join(out, CARD), str(card))
    return manifest
