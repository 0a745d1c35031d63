"""Run the generation stage alone (no Ray): prompts in, one samples shard out (OUT/samples/data/).

    python -m generation --input builtin:alpaca_eval --output OUT/samples \
        [--config cluster/configs/default.yaml] [k=4 max_tokens=64 prompts.limit=16 ...]

`--input` is a JSONL/Parquet prompts file or a builtin set; keys prefixed `prompts.` configure
prompt loading (subsets, limit, split), the rest the sampler. Rejected prompt rows go to
OUT/quarantine.jsonl with their reasons.
"""

import sys
import time

from generation.config import GenerationConfig, PromptsConfig
from generation.prompts import check_usable, load_prompts
from generation.quarantine import write_quarantine
from generation.schema import ERROR, NUM_TOKENS, SAMPLES_SCHEMA
from rsdpo.cli import exits_2_on_input_error, parse_overrides, stage_parser
from rsdpo.logs import progress_bar, setup_logging
from rsdpo.manifest import write_manifest
from rsdpo.shards import shard_name, shard_path, write_shard


@exits_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cluster.config import stage_config  # a run config is validated whole (entry points only)

    args = stage_parser(__doc__, {"": GenerationConfig, "prompts.": PromptsConfig}).parse_args(argv)
    setup_logging(args.log_level)
    overrides = parse_overrides(args.overrides)
    prompt_over = overrides.pop("prompts", {}) | {"source": args.input}
    pcfg = stage_config("prompts", args.config, prompt_over)
    scfg = stage_config("generation", args.config, overrides)
    loaded = load_prompts(pcfg)
    out = args.output
    if (quarantined := write_quarantine(out, loaded.rejects)) is not None:
        print(f"[generation] {len(loaded.rejects)} prompt row(s) quarantined -> {quarantined}", file=sys.stderr)
    check_usable(loaded, pcfg, quarantined)
    from generation.sampler import Sampler
    from rsdpo.assets import model_identity

    t0 = time.time()
    sampler = Sampler(scfg, exclusive_cpu=True)  # nothing else runs beside this engine
    t1 = time.time()
    with progress_bar(loaded.table.num_rows, "generate") as bar:
        samples = sampler(loaded.table, progress=bar.update)
    t2 = time.time()
    write_shard(samples, shard_path(out, shard_name(0)), SAMPLES_SCHEMA)
    errors = sum(e is not None for e in samples.column(ERROR).to_pylist())
    tokens = sum(sum(t) for t in samples.column(NUM_TOKENS).to_pylist())
    write_manifest(out, {
        "stage": "generation",
        "config": {"prompts": pcfg.model_dump(mode="json"), "generation": scfg.model_dump(mode="json")},
        "models": {"policy": model_identity(sampler.model_path)},
        "counts": {"prompts_in": samples.num_rows + len(loaded.rejects), "rows_out": samples.num_rows - errors,
                   "row_errors": errors, "quarantined": len(loaded.rejects), "output_tokens": tokens},
        "timing_s": {"engine_start": round(t1 - t0, 2), "generate": round(t2 - t1, 2)},
    })
    print(f"[generation] {samples.num_rows} prompts, {errors} row errors, {tokens} tokens in "
          f"{t2 - t1:.1f}s ({tokens / max(t2 - t1, 1e-9):.0f} tok/s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
