"""The training output's resume policy (fast tier): existing=fail|restart|resume on folders of every
shape, checkpoint discovery, and reuse of a finished run only for the same work."""

import json

import pytest

from rsdpo.manifest import read_manifest, write_manifest
from training.checkpoints import (
    CHECKPOINTS,
    RUN_RECORD,
    check_same_run,
    completed_run,
    last_checkpoint,
    prepare_output,
    work_record,
)
from training.config import TrainingConfig


def work(config: TrainingConfig, pairs: str = "abc", policy: str = "p0", world_size: int = 1) -> dict:
    return work_record(config, pairs, policy, policy, world_size)


def finished_run(output, config: TrainingConfig) -> None:
    """What a completed training run leaves: weights, checkpoints, a training manifest with its work."""
    (output / CHECKPOINTS / "checkpoint-4").mkdir(parents=True)
    (output / "model.safetensors").write_bytes(b"weights")
    write_manifest(output, {"stage": "training", "status": "complete", "work": work(config)})


def test_last_checkpoint_skips_one_killed_while_saving(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for step in (5, 10, 15):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    # checkpoint-15 has no trainer_state.json: the run died while writing it.
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-15").exists()


def test_resume_refuses_checkpoints_of_another_run(tmp_path):
    ckpt = str(tmp_path / "checkpoints" / "checkpoint-2")
    check_same_run(tmp_path, work(TrainingConfig(beta=0.1), "abc"), None)      # first attempt records itself
    check_same_run(tmp_path, work(TrainingConfig(beta=0.1, dpo={"max_steps": 9}), "abc"), ckpt)  # dpo may change
    with pytest.raises(ValueError, match=r"differs in: beta, pairs_sha256"):
        check_same_run(tmp_path, work(TrainingConfig(beta=0.2), "abd"), ckpt)


def test_existing_fail_refuses_a_folder_that_holds_anything(tmp_path):
    config = TrainingConfig(existing="fail")
    assert prepare_output(config, tmp_path / "new") is None  # a new folder
    (tmp_path / "empty").mkdir()
    assert prepare_output(config, tmp_path / "empty") is None
    finished_run(tmp_path / "done", TrainingConfig())
    with pytest.raises(FileExistsError, match="is not empty and existing=fail"):
        prepare_output(config, tmp_path / "done")
    assert (tmp_path / "done" / "model.safetensors").exists()


def test_existing_restart_deletes_a_training_output(tmp_path):
    config = TrainingConfig(existing="restart")
    finished_run(tmp_path / "done", TrainingConfig())
    assert prepare_output(config, tmp_path / "done") is None
    assert not (tmp_path / "done").exists()
    # A run killed before it finished: no manifest yet, but the run record it writes first.
    killed = tmp_path / "killed"
    (killed / CHECKPOINTS).mkdir(parents=True)
    (killed / CHECKPOINTS / RUN_RECORD).write_text(json.dumps(work(TrainingConfig())))
    (killed / ".cache").mkdir()
    assert prepare_output(config, killed) is None
    assert not killed.exists()


def test_existing_restart_never_deletes_a_pipeline_run_folder(tmp_path):
    """`--output OUT existing=restart` with OUT a run folder (a typo for OUT/policy): before, any
    manifest.json made the folder "ours" and the whole run (shards, plan, manifest) was deleted."""
    run = tmp_path / "run"
    for sub in ("scored", "pairs"):
        (run / sub).mkdir(parents=True)
        (run / sub / "shard-00000.parquet").write_bytes(b"PAR1")
    (run / "plan.json").write_text("{}")
    write_manifest(run, {"stage": "pipeline", "counts": {}})
    (run / CHECKPOINTS).mkdir()  # even a folder of that name does not make it a training output
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(FileExistsError, match=r"did not write .*'pipeline' manifest.*run/policy"):
        prepare_output(TrainingConfig(existing="restart"), run)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert read_manifest(run)["stage"] == "pipeline"


def test_a_finished_run_is_reused_only_for_the_same_work(tmp_path):
    """Before, a completed output was returned for any config: a new learning rate reported the old
    policy as if it had been trained with it."""
    config = TrainingConfig(dpo={"learning_rate": 1e-5})
    finished_run(tmp_path, config)
    assert completed_run(config, tmp_path, work(config))["status"] == "complete"
    # Not the work: how to treat the folder, Ray's worker CPUs, the name the same weights go by.
    same = config.model_copy(update={"cpus_per_worker": 2, "model": "/elsewhere/same-weights"})
    assert completed_run(same, tmp_path, work(same)) is not None
    other_lr = TrainingConfig(dpo={"learning_rate": 2e-5})
    with pytest.raises(FileExistsError, match=r"other work \(differs in: dpo\); existing=restart"):
        completed_run(other_lr, tmp_path, work(other_lr))
    with pytest.raises(FileExistsError, match=r"differs in: pairs_sha256"):
        completed_run(config, tmp_path, work(config, pairs="new-pairs"))
    with pytest.raises(FileExistsError, match=r"differs in: policy_in_sha256, reference_sha256, world_size"):
        completed_run(config, tmp_path, work(config, policy="p1", world_size=2))
    # existing=restart and fail never reuse: prepare_output decides for them.
    assert completed_run(config.model_copy(update={"existing": "restart"}), tmp_path, work(config)) is None
