"""Summarise a finished run folder: counts, errors, quarantine, pairs per prompt, acceptance at the
run's eta/tau, reward spread, chosen vs rejected lengths, per-stage throughput, warnings.

    rsdpo inspect OUT [--json]
    python -m cluster.inspect_run OUT [--json]

OUT is a data job's folder (`python -m cluster.run ... training=null`: scored/, pairs/, manifest.json)
or a chain's (round-N/ each such a folder, plus training and evaluation). Everything is recomputed
from the shards with the run's own pairing config (pairing.pairs.prepare/select, the code that made
the pairs), so a pairs folder that disagrees with its scored shards is reported, not trusted.
Shards are read one at a time, through rsdpo.shards and rsdpo.manifest (the storage seam), and
only the columns each figure needs. No ray import: it runs where only pyarrow is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from generation.quarantine import read_quarantine
from generation.schema import NUM_TOKENS, PROMPT_ID
from pairing import rules
from pairing.config import PairingConfig, Strategy
from pairing.pairs import prepare, select, spreads
from pairing.schema import CHOSEN, CHOSEN_INDEX, PAIRS_SCHEMA, REJECTED, REJECTED_INDEX
from rewarding.schema import SCORED_SCHEMA
from rsdpo import storage
from rsdpo.logs import add_log_level, setup_logging
from rsdpo.manifest import read_manifest
from rsdpo.shards import list_shards, read_shard, shard_stem

EXAMPLES = 3   # error and quarantine reasons quoted per kind


def _summary(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"mean": round(float(values.mean()), 4), "p10": round(float(q[0]), 4), "median": round(float(q[1]), 4),
            "p90": round(float(q[2]), 4), "max": round(float(values.max()), 4), "min": round(float(values.min()), 4)}


def _scored_figures(folder: str, config: PairingConfig) -> dict[str, Any]:
    """Per-shard pass over scored/: errors, candidates and rule acceptance, spreads, token counts."""
    uncapped = config.model_copy(update={"max_pairs_per_prompt": None})
    rows = candidates = accepted = expected_pairs = 0
    error_kinds: Counter = Counter()
    examples: dict[str, list[str]] = {}
    spread_parts, tokens, usable_ids = [], {}, []
    for path in list_shards(folder):
        cand = prepare(read_shard(path, SCORED_SCHEMA), config)
        rows += cand.table.num_rows
        eligible = cand.mask.sum(axis=1)
        candidates += int((eligible * (eligible - 1)).sum())
        accepted += len(select(cand, uncapped)[0])
        expected_pairs += len(select(cand, config)[0])
        spread_parts.append(spreads(cand))
        for e in cand.errors:
            kind = e["reason"].split(":", 1)[0]
            error_kinds[kind] += 1
            examples.setdefault(kind, [])
            if len(examples[kind]) < EXAMPLES:
                examples[kind].append(f"{e['prompt_id']}: {e['reason']}")
        ids, ntok = (cand.table.column(c).to_pylist() for c in (PROMPT_ID, NUM_TOKENS))
        tokens.update(zip(ids, ntok, strict=True))
        usable_ids += [pid for pid, bad in zip(ids, cand.errored, strict=True) if not bad]
    spread = np.concatenate(spread_parts) if spread_parts else np.array([])
    return {"rows": rows, "candidates": candidates, "accepted": accepted,
            "expected_pairs": expected_pairs, "error_kinds": dict(error_kinds), "error_examples": examples,
            "spreads": spread, "tokens": tokens, "usable_ids": usable_ids}


def _pairs_figures(folder: str, tokens: dict[str, list[int]]) -> dict[str, Any]:
    per_prompt: Counter = Counter()
    chars = {CHOSEN: [], REJECTED: []}
    toks = {CHOSEN: [], REJECTED: []}
    for path in list_shards(folder):
        t = read_shard(path, PAIRS_SCHEMA, columns=[PROMPT_ID, CHOSEN, REJECTED, CHOSEN_INDEX, REJECTED_INDEX])
        ids = t.column(PROMPT_ID).to_pylist()
        per_prompt.update(ids)
        for side, index in ((CHOSEN, CHOSEN_INDEX), (REJECTED, REJECTED_INDEX)):
            text = pc.struct_field(pc.list_element(t.column(side), 0), "content")
            chars[side].append(pc.utf8_length(text).to_numpy(zero_copy_only=False))
            toks[side] += [tokens[p][j] if p in tokens else np.nan
                           for p, j in zip(ids, t.column(index).to_pylist(), strict=True)]
    return {"pairs": sum(per_prompt.values()), "per_prompt": per_prompt,
            "chars": {s: np.concatenate(v) if v else np.array([]) for s, v in chars.items()},
            "tokens": {s: np.asarray(v, dtype=np.float64) for s, v in toks.items()}}


def inspect_data_run(out: str) -> dict[str, Any]:
    """The report of one data job's folder (scored/, pairs/, manifest.json)."""
    manifest = read_manifest(out)
    if manifest is None:
        raise FileNotFoundError(f"{out}: no manifest.json; is this a run folder (`rsdpo run` output_dir)?")
    config = PairingConfig.model_validate(manifest["config"]["pairing"])
    counts = manifest.get("counts", {})
    scored = _scored_figures(storage.join(out, "scored"), config)
    pairs = _pairs_figures(storage.join(out, "pairs"), scored["tokens"])
    per_prompt = np.array([pairs["per_prompt"].get(pid, 0) for pid in scored["usable_ids"]], dtype=np.int64)
    quarantine = read_quarantine(out)
    q_kinds = Counter(r.get("field") or "row" for r in quarantine)

    warnings = list(manifest.get("warnings", []))
    if counts and not counts.get("balanced", True):
        warnings.append(f"counts do not balance: {counts}")
    if counts.get("shards_planned") and counts.get("shards", 0) < counts["shards_planned"]:
        warnings.append(f"{counts['shards']} of {counts['shards_planned']} shards committed: the run stopped early; "
                        f"re-run the same command to resume")
    if pairs["pairs"] != scored["expected_pairs"]:
        warnings.append(f"pairs/ holds {pairs['pairs']} pairs but its scored shards give {scored['expected_pairs']} "
                        f"at the run's pairing config: the folders are out of step (mixed runs or an edited config)")
    stray = sorted({shard_stem(p) for p in list_shards(storage.join(out, "pairs"))}
                   - {shard_stem(p) for p in list_shards(storage.join(out, "scored"))})
    if stray:
        warnings.append(f"pairs/ has shards without a committed scored shard: {stray[:5]}")

    ch_tok, rj_tok = pairs["tokens"][CHOSEN], pairs["tokens"][REJECTED]
    threshold = rules.raw_threshold(config.tau, config.eta) if config.strategy == Strategy.RS_DPO else None
    spread = scored["spreads"]
    return {
        "dir": str(out),
        "stage": manifest.get("stage"),
        "written_at": manifest.get("written_at"),
        "fingerprint": manifest.get("fingerprint"),
        "models": {role: m.get("path") for role, m in manifest.get("models", {}).items()},
        "counts": counts,
        "errors": {"rows": sum(scored["error_kinds"].values()), "by_kind": scored["error_kinds"],
                   "examples": scored["error_examples"]},
        "quarantine": {"rows": len(quarantine), "by_field": dict(q_kinds),
                       "examples": [r.get("reason", "") for r in quarantine[:EXAMPLES]]},
        "pairing": {"strategy": str(config.strategy), "eta": config.eta, "tau": config.tau,
                    "raw_threshold": threshold, "max_pairs_per_prompt": config.max_pairs_per_prompt},
        "pairs": {
            "pairs": pairs["pairs"],
            "usable_prompts": len(scored["usable_ids"]),
            "prompts_with_pairs": int((per_prompt > 0).sum()),
            "per_usable_prompt": _summary(per_prompt.astype(np.float64)),
            "prompts_by_pair_count": {str(n): int(c) for n, c in sorted(Counter(per_prompt.tolist()).items())},
        },
        "acceptance": {"candidate_ordered_pairs": scored["candidates"], "accepted_by_rule": scored["accepted"],
                       "rate": round(scored["accepted"] / scored["candidates"], 4) if scored["candidates"] else None,
                       "written": pairs["pairs"]},
        "reward_spread": {**(_summary(spread) or {}), "prompts": len(spread),
                          "above_threshold": int((spread > threshold).sum()) if threshold is not None else None},
        "lengths": {
            "chosen_tokens": _summary(ch_tok[np.isfinite(ch_tok)]),
            "rejected_tokens": _summary(rj_tok[np.isfinite(rj_tok)]),
            "chosen_chars": _summary(pairs["chars"][CHOSEN]), "rejected_chars": _summary(pairs["chars"][REJECTED]),
            "chosen_longer_share": round(float((ch_tok > rj_tok).mean()), 4) if len(ch_tok) else None,
        },
        "throughput": manifest.get("throughput", {}),
        "warnings": warnings,
    }


def inspect_run(out: str | Path) -> dict[str, Any]:
    """A data job's report, or a chain's: every round's data report plus its training and evaluation."""
    out = str(out)
    manifest = read_manifest(out)
    if manifest is None or manifest.get("stage") != "chain":
        return inspect_data_run(out)
    rounds = []
    for record in manifest["rounds"]:
        report = inspect_data_run(record["dir"] if Path(record["dir"]).is_absolute()
                                  else storage.join(out, f"round-{record['round']}"))
        report |= {"round": record["round"], "sampled_from": record["sampled_from"],
                   "training": record.get("training"), "evaluation": record.get("evaluation")}
        rounds.append(report)
    return {"dir": str(out), "stage": "chain", "rounds": rounds}


def _fmt(summary: dict | None, unit: str = "") -> str:
    if not summary:
        return "n/a"
    return (f"mean {summary['mean']:.4g}{unit}, median {summary['median']:.4g}, p10 {summary['p10']:.4g}, "
            f"p90 {summary['p90']:.4g}, max {summary['max']:.4g}")


def render(report: dict[str, Any]) -> str:
    """The report as text, one labelled line (or a few) per figure."""
    if report.get("stage") == "chain":
        parts = [f"chain {report['dir']}: {len(report['rounds'])} round(s)"]
        for r in report["rounds"]:
            parts.append(f"\n=== round {r['round']} (sampled from {r['sampled_from']}) ===\n{render(r)}")
            if r.get("training"):
                parts.append(f"training    {json.dumps(r['training'].get('metrics'), default=str)}")
            if r.get("evaluation"):
                parts.append(f"evaluation  {json.dumps(r['evaluation'].get('overall'), default=str)}")
        return "\n".join(parts)
    c, p, a, s, ln = report["counts"], report["pairs"], report["acceptance"], report["reward_spread"], report["lengths"]
    cfg, t = report["pairing"], report["throughput"]
    lines = [f"run         {report['dir']} ({report['stage']}, written {report['written_at']}, "
             f"fingerprint {report['fingerprint']})",
             f"models      {', '.join(f'{k}: {v}' for k, v in report['models'].items())}"]
    if c:
        lines.append(f"counts      {c.get('prompts_in')} prompts in: {c.get('rows_out')} scored, {c.get('row_errors')} "
                     f"row errors, {c.get('quarantined')} quarantined; {c.get('shards')}/{c.get('shards_planned')} "
                     f"shards committed; {'balanced' if c.get('balanced') else 'NOT balanced'}")
    e = report["errors"]
    lines.append(f"errors      {e['rows']} row(s)" + "".join(
        f"\n              {kind} ({n}): " + " | ".join(e["examples"][kind]) for kind, n in e["by_kind"].items()))
    qr = report["quarantine"]
    lines.append(f"quarantine  {qr['rows']} prompt row(s)" + "".join(f"\n              {x}" for x in qr["examples"]))
    usable = p["usable_prompts"]
    lines.append(f"pairs       {p['pairs']} pairs from {p['prompts_with_pairs']} of {usable} usable prompts"
                 + (f" ({p['prompts_with_pairs'] / usable:.0%})" if usable else ""))
    lines.append(f"  per prompt {_fmt(p['per_usable_prompt'])}")
    lines.append("  prompts by pair count  " + ", ".join(f"{n}: {c_}" for n, c_ in p["prompts_by_pair_count"].items()))
    rule = (f"rs-dpo at eta={cfg['eta']}, tau={cfg['tau']} (raw gap > {cfg['raw_threshold']:.4g})"
            if cfg["raw_threshold"] is not None else f"strategy {cfg['strategy']}")
    rate = f" ({a['rate']:.1%})" if a["rate"] is not None else ""
    lines.append(f"acceptance  {rule}: {a['accepted_by_rule']} of {a['candidate_ordered_pairs']} candidate ordered "
                 f"pairs{rate}; {a['written']} written" + (f" (cap {cfg['max_pairs_per_prompt']} per prompt)"
                                                          if cfg["max_pairs_per_prompt"] else ""))
    above = (f"; {s['above_threshold']} of {s['prompts']} prompts above the threshold"
             if s.get("above_threshold") is not None else "")
    lines.append(f"reward spread (max - min per usable prompt, raw units) {_fmt(s if 'mean' in s else None)}{above}")
    longer = f"; chosen longer in {ln['chosen_longer_share']:.0%} of pairs" if ln["chosen_longer_share"] is not None else ""
    lines.append(f"lengths     chosen   {_fmt(ln['chosen_tokens'], ' tok')}")
    lines.append(f"            rejected {_fmt(ln['rejected_tokens'], ' tok')}{longer}")
    if t:
        busy = t.get("busy_s", {})
        lines.append(f"throughput  wall {t.get('wall_s')} s this session: {t.get('prompts_per_s')} prompts/s, "
                     f"{t.get('output_tokens_per_s')} output tok/s, {t.get('pairs_per_s')} pairs/s")
        lines.append(f"  per stage (busy) sample {t.get('sampler_busy_output_tokens_per_s')} tok/s over "
                     f"{busy.get('sample')} s; score {t.get('scorer_busy_responses_per_s')} responses/s over "
                     f"{busy.get('score')} s; pair {t.get('pairing_busy_prompts_per_s')} prompts/s over "
                     f"{busy.get('pair')} s")
    else:
        lines.append("throughput  n/a (every shard was committed by an earlier session)")
    lines.append("warnings    " + ("none" if not report["warnings"] else
                                   "".join(f"\n  - {w}" for w in report["warnings"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="run folder (output_dir of `rsdpo run`)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    add_log_level(ap)
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    try:
        report = inspect_run(args.dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
