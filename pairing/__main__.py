"""Pairing stage entry point: scored shards -> pairs shards, grid sweeps, and folder validation.

    python -m pairing --input SCORED_DIR_OR_FILE --output PAIRS_DIR [--config FILE] [key=value ...]
    python -m pairing sweep --input SCORED --output REPORT_DIR [--eta 0.8,0.85,0.9] [--tau 0.8,1.0,1.2] [key=value ...]
    python -m pairing validate DIR

The plain form writes one pairs shard per scored shard (same file stem, under PAIRS_DIR/data/), and
beside data/ manifest.json (resolved
config, raw threshold, inputs, counts, errors, warnings) and README.md (dataset card).
Bad config or input shards exit 2 with the reason; `validate` exits 1 when it finds a violation.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pairing import rules
from pairing.card import UPSTREAM_SECTIONS, write_pairs_meta, write_pairs_shard
from pairing.config import PairingConfig
from pairing.pairs import coverage_warning, make_pairs, merge_stats
from pairing.truncation import load_tokenizer
from rewarding.schema import SCORED_SCHEMA
from rsdpo import storage
from rsdpo.cli import config_help, exits_2_on_input_error, stage_parser
from rsdpo.errors import MissingInput
from rsdpo.logs import add_log_level, setup_logging
from rsdpo.manifest import read_manifest
from rsdpo.shards import list_shards, read_shard, shard_path, shard_stem, sidecar_dir

COMMANDS = ("run", "sweep", "validate")


def run(input_path: str, output: str, config: PairingConfig) -> dict:
    """Pair every scored shard under `input_path` into `output`; returns the merged stats."""
    shards = list_shards(input_path)
    if not shards:
        raise MissingInput(f"--input {input_path}: no .parquet scored shards there")
    out = str(output)
    stale = sorted({storage.basename(p) for p in list_shards(out)} - {storage.basename(p) for p in shards}) \
        if storage.is_dir(out) else []
    if stale:
        print(f"warning: {out} also holds shards this run does not write ({', '.join(stale[:5])}"
              f"{', ...' if len(stale) > 5 else ''}): readers of the folder will see them too", file=sys.stderr)
    parts, spreads, written = [], [], []
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer and config.max_length else None
    for path in shards:
        result = make_pairs(read_shard(path, SCORED_SCHEMA), config,
                            shuffle_seed=rules.stable_key(config.seed, shard_stem(path)), tokenizer=tokenizer)
        written.append(write_pairs_shard(result, shard_path(out, shard_stem(path))))
        parts.append(result.stats)
        spreads.append(result.spreads)
    stats = merge_stats(parts)
    spread = np.concatenate(spreads)
    warning = coverage_warning(config, stats, spread)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    # What made the scored input: the pipeline's scored manifest holds the whole run config,
    # `python -m rewarding`'s its own section and the models.
    upstream = read_manifest(sidecar_dir(input_path)) or {}
    made = {k: v for k, v in upstream.get("config", {}).items() if k in UPSTREAM_SECTIONS}
    write_pairs_meta(out, config, written, made_by="python -m pairing", inputs=[input_path],
                     models=upstream.get("models", {}), spreads=spread, upstream=made,
                     warnings=[warning] if warning else [])
    return stats


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pairing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    keys = config_help({"": PairingConfig})
    sub.add_parser("run", parents=[stage_parser("pair scored shards", {"": PairingConfig})], add_help=False,
                   help="pair scored shards (the default: `python -m pairing --input ...` runs this)",
                   epilog=keys, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep = sub.add_parser("sweep", help="re-pair cached scored shards over an eta x tau grid; write a report",
                           epilog=keys, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--input", required=True, help="scored shard folder or file")
    sweep.add_argument("--output", required=True, help="report folder (CSV, Markdown, PNG plots)")
    sweep.add_argument("--eta", default="0.8,0.85,0.9", help="comma-separated eta values")
    sweep.add_argument("--tau", default="0.8,1.0,1.2", help="comma-separated tau values")
    sweep.add_argument("--config", help="YAML config (its pairing section) for the other options")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides (dedup_responses=false, ...)")
    add_log_level(sweep)
    validate = sub.add_parser("validate", help="check a scored or pairs folder's schema and invariants")
    validate.add_argument("dir", help="shard folder (or one shard file)")
    add_log_level(validate)
    return ap


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cluster.config import stage_config  # a run config is validated whole (entry points only)

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]                       # keep `python -m pairing --input ... --output ...`
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    match args.command:
        case "run":
            config = stage_config("pairing", args.config, args.overrides)
            stats = run(args.input, args.output, config)
            print(f"pairing: {stats['prompts_in']} prompts -> {stats['pairs']} pairs "
                  f"({stats['prompts_with_pairs']} with pairs, {stats['prompts_without_pairs']} without, "
                  f"{stats['prompts_errored']} errored), strategy={config.strategy} -> {args.output}")
        case "sweep":
            from pairing.sweep import parse_grid, sweep
            config = stage_config("pairing", args.config, args.overrides)
            report = sweep(args.input, args.output, config, parse_grid(args.eta, "eta"),
                           parse_grid(args.tau, "tau"))
            table = storage.read_text(storage.join(storage.parent(report), "sweep.md"))
            print(table + f"\nsweep: report in {report}")
        case "validate":
            from pairing.validate import validate
            ok, message = validate(args.dir)
            print(message, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
