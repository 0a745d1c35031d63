"""eta x tau sweep: re-pair cached scored shards over a grid (no regeneration, no rescoring).

    python -m pairing sweep --input SCORED --output REPORT_DIR --eta 0.8,0.85,0.9 --tau 0.8,1.0,1.2 [key=value ...]

The scored table is prepared once (error rows, truncation, dedup do not depend on eta or tau);
each grid point then runs only the batched rs-dpo rule, with the same code as make_pairs.
Writes sweep.csv, sweep.md, README.md, manifest.json and three plots: pairs_vs_eta.png,
reward_spread.png, lengths.png.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow.compute as pc

from pairing import rules
from pairing.config import PairingConfig, Strategy
from pairing.pairs import prepare, select, spreads
from rewarding.schema import SCORED_SCHEMA
from rsdpo import storage
from rsdpo.cli import ConfigError, load_config
from rsdpo.manifest import write_manifest
from rsdpo.shards import read_shards

COLUMNS = ("eta", "tau", "raw_threshold", "pairs", "pairs_per_prompt", "prompts_with_pairs",
           "mean_reward_gap", "length_ratio")


def parse_grid(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} {text!r}: expected comma-separated numbers, e.g. 0.8,0.85,0.9") from None
    if not values:
        raise ConfigError(f"--{name}: give at least one value")
    return values


def sweep(input_path: str, output: str, config: PairingConfig, etas: list[float], taus: list[float]) -> str:
    """Run the grid, write the report folder, return the path of its README.md."""
    if config.strategy != Strategy.RS_DPO:
        raise ConfigError(f"strategy={config.strategy}: the sweep varies eta and tau, which only rs-dpo uses; "
                          f"drop the strategy override")
    base = config.model_dump(mode="json")
    grid = [load_config(PairingConfig, None, {**base, "eta": eta, "tau": tau}) for tau in taus for eta in etas]
    cand = prepare(read_shards(input_path, SCORED_SCHEMA), config)
    usable = int((~cand.errored).sum())
    chars = pc.utf8_length(cand.texts).fill_null(0).to_numpy(zero_copy_only=False)   # (all texts,) characters

    rows_out, lengths = [], {}
    for cfg in grid:
        rows, ch, rj = select(cand, cfg)
        gap = cand.rewards[rows, ch] - cand.rewards[rows, rj]
        len_ch, len_rj = chars[cand.starts[rows] + ch], chars[cand.starts[rows] + rj]
        lengths[(cfg.eta, cfg.tau)] = (len_ch, len_rj)
        rows_out.append({
            "eta": cfg.eta, "tau": cfg.tau, "raw_threshold": rules.raw_threshold(cfg.tau, cfg.eta),
            "pairs": len(rows),
            "pairs_per_prompt": len(rows) / usable if usable else 0.0,
            "prompts_with_pairs": len(np.unique(rows)),
            "mean_reward_gap": float(gap.mean()) if len(gap) else float("nan"),
            "length_ratio": float(len_ch.mean() / len_rj.mean()) if len(rows) and len_rj.mean() else float("nan"),
        })

    out = str(output)
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows_out)
    storage.write_text(storage.join(out, "sweep.csv"), table_csv.getvalue())
    table_md = _markdown(rows_out)
    storage.write_text(storage.join(out, "sweep.md"), table_md)
    spread = spreads(cand)
    focus = (config.eta, config.tau) if (config.eta, config.tau) in lengths else (etas[len(etas) // 2],
                                                                                  taus[len(taus) // 2])
    plots = _plots(out, rows_out, etas, taus, spread, focus, lengths[focus])
    write_manifest(out, {"stage": "pairing-sweep", "config": base, "grid": {"eta": etas, "tau": taus},
                         "input": str(input_path), "prompts_in": cand.table.num_rows, "prompts_usable": usable,
                         "prompts_errored": int(cand.errored.sum()), "rows": rows_out})
    return storage.write_text(storage.join(out, "README.md"), "\n".join([
        "# rs-dpo eta x tau sweep",
        "",
        f"Input: `{input_path}` ({cand.table.num_rows} prompts, {usable} usable, "
        f"{int(cand.errored.sum())} errored). Other options: dedup_responses = {config.dedup_responses}, "
        f"exclude_truncated = {config.exclude_truncated}, max_pairs_per_prompt = {config.max_pairs_per_prompt}.",
        "",
        "Algorithm 1 keeps (j, l) when sigmoid((r_j - r_l) / tau) > eta, which is the same as a raw reward gap "
        "r_j - r_l > tau * ln(eta / (1 - eta)) (column `raw_threshold`): eta and tau only move one number, "
        "and what it means depends on the reward model's scale. Per-prompt reward spread (max - min): "
        + (f"median {np.median(spread):.4g}, max {spread.max():.4g}." if len(spread) else "no usable prompt."),
        "",
        "`pairs_per_prompt` is over usable prompts; `length_ratio` is mean chosen / mean rejected length "
        "(characters).",
        "",
        table_md,
        *[f"![{name}]({name})" for name in plots],
        "",
    ]))


def _markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS)
                     + " |")
    return "\n".join(lines) + "\n"


def _plots(out: str, rows: list[dict], etas, taus, spread: np.ndarray, focus, focus_lengths) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tau in taus:
        ax.plot(etas, [r["pairs"] for r in rows if r["tau"] == tau], marker="o", label=f"tau = {tau}")
    ax.set_xlabel("eta")
    ax.set_ylabel("pairs")
    ax.set_title("rs-dpo pairs vs eta")
    ax.legend()
    fig.tight_layout()
    storage.write_figure(storage.join(out, "pairs_vs_eta.png"), fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(spread, bins=min(50, max(5, len(spread) // 5)), color="tab:blue", alpha=0.8)
    for tau in taus:
        ax.axvline(rules.raw_threshold(tau, focus[0]), linestyle="--", color="gray")
    ax.set_xlabel("per-prompt reward spread (max - min), raw units")
    ax.set_ylabel("prompts")
    ax.set_title(f"dashed: raw thresholds at eta = {focus[0]} for tau in {taus}", fontsize=9)
    fig.tight_layout()
    storage.write_figure(storage.join(out, "reward_spread.png"), fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    len_ch, len_rj = focus_lengths
    ax.scatter(len_rj[:5000], len_ch[:5000], s=4, alpha=0.4)
    top = max([1, *len_ch[:5000], *len_rj[:5000]])
    ax.plot([0, top], [0, top], color="gray", linewidth=1)
    ax.set_xlabel("rejected length (characters)")
    ax.set_ylabel("chosen length (characters)")
    ax.set_title(f"pairs at eta = {focus[0]}, tau = {focus[1]}")
    fig.tight_layout()
    storage.write_figure(storage.join(out, "lengths.png"), fig)
    plt.close(fig)
    return ["pairs_vs_eta.png", "reward_spread.png", "lengths.png"]
