"""The training output folder and its resume policy: what `existing=resume|restart|fail` does with a
folder that already holds something, which checkpoint a run resumes from, and when checkpoints are
refused because another run wrote them.

    MODEL/                           the final policy and manifest.json (status: complete)
    MODEL/checkpoints/checkpoint-N   Trainer checkpoints; checkpoints/run.json names the run they belong to
    MODEL/.cache/                    shuffled pairs + TRL's caches (deleted when the run completes)

    python -m training --input PAIRS --output MODEL existing=resume|restart|fail
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from rsdpo.errors import InputError
from rsdpo.manifest import read_manifest
from training.config import Existing, TrainingConfig
from training.distributed import is_main_process, log

CHECKPOINTS = "checkpoints"
CACHE = ".cache"
RUN_RECORD = "run.json"  # in CHECKPOINTS: the work the checkpoints belong to (written before the first one)
STATUS_COMPLETE = "complete"
STAGE = "training"  # the manifest's stage: marks a folder this stage wrote (existing=restart deletes only those)
# Config fields the trained policy does not depend on: how to treat an existing folder, Ray's worker
# count and CPU reservation (world_size says how many processes trained), whether pickle files may
# load. The models count by content (their sha256), not by the path or builtin name that named them.
NOT_WORK = {"existing", "num_workers", "cpus_per_worker", "allow_pickle_weights", "model", "reference_model"}


class OutputRefused(InputError, FileExistsError):
    """`existing` refuses what the output folder holds; the message says what is there and what to do."""


def work_record(config: TrainingConfig, pairs_sha256: str, policy_sha256: str, reference_sha256: str,
                world_size: int) -> dict[str, Any]:
    """What a trained policy is a function of: the training config, the pairs' bytes, the weights it
    starts from and is held to, and the world size (it sets the global batch). Two runs with equal
    records do the same work; the manifest keeps it as `work`, checkpoints/run.json too."""
    return {"config": config.model_dump(mode="json", exclude=NOT_WORK), "pairs_sha256": pairs_sha256,
            "policy_in_sha256": policy_sha256, "reference_sha256": reference_sha256, "world_size": world_size}


def differences(before: dict[str, Any], this: dict[str, Any], ignore: frozenset[str] = frozenset()) -> list[str]:
    """What differs between two work records: config field names first, then the other entries."""
    was, now = before.get("config", {}), this["config"]
    diff = sorted(k for k in set(was) | set(now) if k not in ignore and was.get(k) != now.get(k))
    return diff + [k for k in this if k != "config" and before.get(k) != this[k]]


def completed_run(config: TrainingConfig, output: Path, work: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished run in `output` that existing=resume leaves as is, else None.

    Only the same work is left as is: a finished policy of another config, other pairs or other base
    weights is refused, never reported as if it were this run's.
    """
    done = read_manifest(output)
    if not (done and done.get("status") == STATUS_COMPLETE and config.existing is Existing.RESUME):
        return None
    if diff := differences(done.get("work", {}), work):
        raise OutputRefused(f"{output} holds a completed run of other work (differs in: {', '.join(diff)}); "
                              f"existing=restart trains again into it, or pick a new --output")
    log(f"{output} already holds a completed run of this work (manifest.json); nothing to do "
        f"(existing=restart trains again)")
    return done


def written_by_training(output: Path) -> bool:
    """True when `output` is this stage's folder: a training manifest, or the run record a run writes
    before its first checkpoint (a run killed before it finished)."""
    done = read_manifest(output)
    return done.get("stage") == STAGE if done else (output / CHECKPOINTS / RUN_RECORD).exists()


def last_checkpoint(ckpts: Path) -> str | None:
    """The newest complete checkpoint under `ckpts`, or None.

    The Trainer writes checkpoint-N in place and trainer_state.json last, so a run killed while saving
    leaves a folder without it: that one is skipped (and removed by rank 0, so it is written afresh).
    """
    found = sorted((int(m.group(1)), p) for p in ckpts.glob("checkpoint-*")
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(found):
        if (path / "trainer_state.json").exists():
            return str(path)
        log(f"skipping incomplete checkpoint {path} (no trainer_state.json: killed while saving)")
        if is_main_process():
            shutil.rmtree(path, ignore_errors=True)
    return None


def prepare_output(config: TrainingConfig, output: Path) -> str | None:
    """Apply `existing`; return the checkpoint to resume from, or None. Raises when refused."""
    ckpts = output / CHECKPOINTS
    match config.existing:
        case Existing.FAIL:
            if output.exists() and any(output.iterdir()):
                raise OutputRefused(f"{output} is not empty and existing=fail; pick a new --output or set "
                                      f"existing=resume / existing=restart")
        case Existing.RESTART:
            if not is_main_process():
                return None  # rank 0 decides and deletes; everyone waits for it before writing
            if written_by_training(output):
                log(f"existing=restart: deleting {output}")
                shutil.rmtree(output)
            elif output.exists() and any(output.iterdir()):
                stage = (read_manifest(output) or {}).get("stage")
                found = ", ".join(sorted(p.name for p in output.iterdir())[:8])
                raise OutputRefused(
                    f"{output} holds files the training stage did not write ({found}"
                    f"{f'; its manifest.json is a {stage!r} manifest' if stage else ''}); existing=restart "
                    f"deletes only a training output. Pick a new --output (e.g. {output / 'policy'})")
        case Existing.RESUME:
            return last_checkpoint(ckpts) if ckpts.is_dir() else None
    return None


def check_same_run(output: Path, work: dict[str, Any], resume_from: str | None) -> None:
    """Refuse to resume checkpoints that another model, objective, data or world size produced.

    `dpo` may change between attempts (e.g. a larger max_steps to train on); the rest may not, or the
    checkpoints would silently mix two runs.
    """
    path = output / CHECKPOINTS / RUN_RECORD
    if resume_from and path.exists():
        if diff := differences(json.loads(path.read_text()), work, ignore=frozenset({"dpo"})):
            raise ValueError(f"{output} holds checkpoints of a different run (differs in: {', '.join(diff)}); "
                             f"re-run with the same settings to resume, or existing=restart to start over")
    elif is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(work, indent=2) + "\n")
