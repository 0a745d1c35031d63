"""Shard planning and the resume plan: the seeded shuffle of the prompts, their cut into named
shards, and OUT/plan.json (config fingerprint, model hashes, prompt ids per shard), which a re-run
checks before it extends a folder's shards.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from cluster.config import RunConfig
from generation.schema import PROMPT_ID
from rsdpo import storage
from rsdpo.errors import InputError
from rsdpo.shards import DATA, SHARD_SUFFIX, data_dir, list_shards, shard_name


class RunRefused(InputError):
    """The output folder holds a run this config would contradict; the message says what to do."""


TAIL_SPLIT = 4  # the last shard_size prompts of a job of >= 4 shards go in shards a quarter the size


def shard_sizes(n: int, shard_size: int) -> list[int]:
    """Prompts per shard, in order: shard_size each, except that a job of at least TAIL_SPLIT full
    shards cuts its last shard_size prompts into shards of shard_size / TAIL_SPLIT. Nothing overlaps
    the last shard's scoring and commit (generation has ended), so a small last shard keeps the
    job's tail short; while shards are in flight, small ones cost the engine nothing."""
    sizes, rest = [], n
    tapered = n >= TAIL_SPLIT * shard_size
    while rest > (shard_size if tapered else 0):
        sizes.append(min(shard_size, rest))
        rest -= sizes[-1]
    small = -(-shard_size // TAIL_SPLIT)
    while rest > 0:
        sizes.append(min(small, rest))
        rest -= sizes[-1]
    return sizes


def plan_shards(prompts: pa.Table, cfg: RunConfig) -> list[tuple[str, pa.Table]]:
    """Seeded shuffle (so shards mix sources/topics), then cut into named shards (shard_sizes)."""
    perm = np.random.default_rng(cfg.seed).permutation(prompts.num_rows)
    shuffled = prompts.take(pa.array(perm, pa.int64()))
    plan, start = [], 0
    for i, size in enumerate(shard_sizes(shuffled.num_rows, cfg.shard_size)):
        plan.append((shard_name(i), shuffled.slice(start, size)))
        start += size
    return plan


def check_resume(cfg: RunConfig, plan: list[tuple[str, pa.Table]], fresh: bool, models: dict) -> None:
    out = cfg.out
    plan_ids = {name: t.column(PROMPT_ID).to_pylist() for name, t in plan}
    model_hashes = {role: m["sha256"] for role, m in models.items()}
    record = {"fingerprint": cfg.fingerprint(), "models": model_hashes, "shards": plan_ids}
    plan_file = storage.join(out, "plan.json")
    old_layout = [p for sub in ("scored", "pairs") for p in storage.list_files(storage.join(out, sub), (SHARD_SUFFIX,))]
    if old_layout and not fresh:
        raise RunRefused(
            f"{out}: {len(old_layout)} shard(s) lie directly in scored/ or pairs/ (the layout before shards "
            f"moved to a {DATA}/ subfolder, e.g. {old_layout[0]}). To resume, move them: "
            f"`for d in scored pairs; do mkdir -p {out}/$d/{DATA} && mv {out}/$d/*{SHARD_SUFFIX} {out}/$d/{DATA}/; done`; "
            f"or pass --fresh to discard them.")
    if fresh:
        # plan.json is replaced below, not deleted: one commit, and no object-store delete of a
        # lone object (which leaves folder markers behind on some S3-compatible servers)
        for sub in ("scored", "pairs"):
            storage.delete_tree(storage.join(out, sub))
    elif storage.exists(plan_file):
        old = json.loads(storage.read_text(plan_file))
        if old["fingerprint"] != record["fingerprint"]:
            raise RunRefused(
                f"{out} holds shards from a different configuration (fingerprint {old['fingerprint']} != "
                f"{record['fingerprint']}: model, k, seed, sampling, reward or pairing settings changed). "
                f"Resuming would mix inconsistent shards. Use a new output_dir, or pass --fresh to discard "
                f"them. To re-pair cached rewards with new eta/tau, run "
                f"`python -m pairing --input {storage.join(out, 'scored')} --output OTHER_DIR eta=.. tau=..`.")
        if old.get("models", model_hashes) != model_hashes:
            changed = [r for r in model_hashes if old["models"].get(r) != model_hashes[r]]
            raise RunRefused(
                f"{out}: the {' and '.join(changed)} model's files changed since the shards were written "
                f"(same path, different content hash). Use a new output_dir or pass --fresh.")
        if old["shards"] != plan_ids:
            raise RunRefused(
                f"{out}: the prompt set or its cut into shards changed since the shards were written "
                f"(different prompts, order, or a version with other shard boundaries). Use a new "
                f"output_dir or pass --fresh.")
    elif storage.is_dir(storage.join(out, "scored")) and list_shards(storage.join(out, "scored")):
        raise RunRefused(f"{out}/scored holds shards without a plan.json; pass --fresh or use a new output_dir")
    clear_temps(out)
    storage.write_text(plan_file, json.dumps(record))


def clear_temps(out: str) -> None:
    """Clear the writers' temp files in the run's scored/ and pairs/ folders (shards and sidecars) on a
    file system; an object store never holds partial objects."""
    for sub in ("scored", "pairs"):
        folder = storage.join(out, sub)
        storage.clear_temps(folder)
        storage.clear_temps(data_dir(folder))
