"""Run the rewarding stage alone (no Ray): samples shards in, scored shards out (same names, under OUT/scored/data/).

    python -m rewarding --input OUT/samples --output OUT/scored [--config F] [backend=classifier model=DIR ...]
"""

import sys
import time

import pyarrow.parquet as pq

from generation.schema import ERROR, RESPONSES, SAMPLES_SCHEMA
from rewarding.config import RewardingConfig
from rewarding.schema import REWARD_TRUNCATED, SCORED_SCHEMA
from rsdpo import storage
from rsdpo.cli import exits_2_on_input_error, stage_parser
from rsdpo.logs import map_in_steps, progress_bar, setup_logging
from rsdpo.manifest import read_manifest, write_manifest
from rsdpo.shards import list_shards, read_shard, shard_path, shard_stem, sidecar_dir, write_shard


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cluster.config import stage_config  # a run config is validated whole (entry points only)

    args = stage_parser(__doc__, {"": RewardingConfig}).parse_args(argv)
    setup_logging(args.log_level)
    cfg = stage_config("rewarding", args.config, args.overrides)
    shards = list_shards(args.input)
    from rewarding.scorer import Scorer, truncation_warning
    from rsdpo.assets import model_identity

    out = args.output
    scorer = Scorer(cfg)
    rows = errors = responses = truncated = 0
    t0 = time.time()
    bar = progress_bar(sum(pq.read_metadata(inner, filesystem=fs).num_rows
                           for fs, inner in map(storage.filesystem, shards)), "score")
    for path in shards:
        samples = read_shard(path, SAMPLES_SCHEMA)
        scored = map_in_steps(scorer, samples, bar)
        write_shard(scored, shard_path(out, shard_stem(path)), SCORED_SCHEMA)
        rows += scored.num_rows
        errors += sum(e is not None for e in scored.column(ERROR).to_pylist())
        responses += sum(len(r) for r in scored.column(RESPONSES).to_pylist())
        truncated += sum(scored.column(REWARD_TRUNCATED).to_pylist())
    bar.close()
    dt = time.time() - t0
    warnings = [w] if (w := truncation_warning(truncated, responses, cfg.max_length)) else []
    for w in warnings:
        print(f"[rewarding] WARNING: {w}", file=sys.stderr)
    upstream = read_manifest(sidecar_dir(args.input))
    write_manifest(out, {
        "stage": "rewarding", "config": {"rewarding": cfg.model_dump(mode="json")},
        "inputs": [str(p) for p in shards],
        "models": {"reward": model_identity(scorer.model_path), **((upstream or {}).get("models", {}))},
        "counts": {"rows_in": rows, "rows_out": rows - errors, "row_errors": errors, "responses_scored": responses,
                   "responses_truncated": truncated},
        "timing_s": {"score": round(dt, 2)}, "warnings": warnings,
    })
    print(f"[rewarding] {rows} prompts, {responses} responses scored in {dt:.1f}s "
          f"({responses / max(dt, 1e-9):.0f}/s), {errors} row errors -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
