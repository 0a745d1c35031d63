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

from common.manifest import read_manifest
from training.config import Existing, TrainingConfig
from training.distributed import is_main_process, log, world_size

CHECKPOINTS = "checkpoints"
CACHE = ".cache"
STATUS_COMPLETE = "complete"


def completed_run(config: TrainingConfig, output: Path) -> dict[str, Any] | None:
    """The manifest of a finished run in `output` that existing=resume leaves as is, else None."""
    done = read_manifest(output)
    if done and done.get("status") == STATUS_COMPLETE and config.existing is Existing.RESUME:
        log(f"{output} already holds a completed run (manifest.json); nothing to do "
            f"(existing=restart trains again)")
        return done
    return None


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
    ours = (output / "manifest.json").exists() or ckpts.exists() or (output / CACHE).exists()
    match config.existing:
        case Existing.FAIL:
            if output.exists() and any(output.iterdir()):
                raise FileExistsError(f"{output} is not empty and existing=fail; pick a new --output or set "
                                      f"existing=resume / existing=restart")
        case Existing.RESTART:
            if not is_main_process():
                return None  # rank 0 decides and deletes; everyone waits for it before writing
            if ours:
                log(f"existing=restart: deleting {output}")
                shutil.rmtree(output)
            elif output.exists() and any(output.iterdir()):
                raise FileExistsError(f"{output} holds files this stage did not write; refusing to delete them")
        case Existing.RESUME:
            return last_checkpoint(ckpts) if ckpts.is_dir() else None
    return None


def check_same_run(output: Path, config: TrainingConfig, digest: str, resume_from: str | None) -> None:
    """Refuse to resume checkpoints that another model, objective, data or world size produced.

    `dpo` may change between attempts (e.g. a larger max_steps to train on); the rest may not, or the
    checkpoints would silently mix two runs.
    """
    path = output / CHECKPOINTS / "run.json"
    keys = {"model", "reference_model", "beta", "max_length", "precompute_ref_log_probs", "deepspeed", "lora",
            "dtype", "seed"}
    this = {"config": config.model_dump(mode="json", include=keys), "pairs_sha256": digest,
            "world_size": world_size()}
    if resume_from and path.exists():
        before = json.loads(path.read_text())
        diff = sorted(k for k in set(before["config"]) | set(this["config"])
                      if before["config"].get(k) != this["config"].get(k))
        diff += [k for k in ("pairs_sha256", "world_size") if before.get(k) != this[k]]
        if diff:
            raise ValueError(f"{output} holds checkpoints of a different run (differs in: {', '.join(diff)}); "
                             f"re-run with the same settings to resume, or existing=restart to start over")
    elif is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(this, indent=2) + "\n")
