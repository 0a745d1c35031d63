"""What the chain reuses (fast tier): a finished policy only for the same work record, an evaluation
report only for the same evaluation config and the same SFT and policy weights."""

import json

from cluster.chain import reusable_report, training_differences
from rsdpo.manifest import write_manifest
from training.checkpoints import CHECKPOINTS, RUN_RECORD, work_record
from training.config import EvaluationConfig, TrainingConfig


def test_a_report_is_reused_only_for_the_same_config_and_models(tmp_path):
    config = EvaluationConfig(bootstrap=200)
    models = {"sft": "s0", "policy": "p0"}
    write_manifest(tmp_path, {"stage": "training.eval", "config": config.model_dump(mode="json"),
                              "models": {role: {"path": f"/m/{role}", "sha256": sha} for role, sha in models.items()}})
    assert reusable_report(tmp_path, config, models) is None  # no report.json (killed before it)
    (tmp_path / "report.json").write_text(json.dumps({"overall": {"win_rate": 0.5}}))
    assert reusable_report(tmp_path, config, models) == {"overall": {"win_rate": 0.5}}
    assert reusable_report(tmp_path, config.model_copy(update={"bootstrap": 300}), models) is None
    assert reusable_report(tmp_path, config, models | {"policy": "p1"}) is None  # the policy was retrained
    assert reusable_report(tmp_path, config, models | {"sft": "s1"}) is None


def test_training_differences_name_the_work_that_changed(tmp_path):
    config = TrainingConfig(dpo={"learning_rate": 1e-5})
    work = work_record(config, "pairs", "p0", "p0", 2)
    assert training_differences(tmp_path / "none", work) == []  # nothing there: train
    (tmp_path / CHECKPOINTS).mkdir()
    (tmp_path / CHECKPOINTS / RUN_RECORD).write_text(json.dumps(work))
    assert training_differences(tmp_path, work) == []  # killed run of this work: resume it
    other = work_record(TrainingConfig(dpo={"learning_rate": 2e-5}), "pairs", "p0", "p0", 2)
    assert training_differences(tmp_path, other) == ["dpo"]  # killed run of other work: start over
    write_manifest(tmp_path, {"stage": "training", "status": "complete", "work": work})
    (tmp_path / "config.json").write_text("{}")
    assert training_differences(tmp_path, work) is None  # finished, same work: reuse
    assert training_differences(tmp_path, other) == ["dpo"]


def test_a_policy_folder_keeps_its_identity_when_its_manifest_is_written(tiny_policy, tmp_path):
    """Training records policy_out before it writes manifest.json into the same folder; the next round's
    data job and the chain's work record hash the folder after. Before, the manifest was hashed too,
    so round 2 never matched the identity round 1 recorded for its own policy."""
    import shutil

    from rsdpo.assets import model_identity

    policy = tmp_path / "policy"
    shutil.copytree(tiny_policy, policy)
    before = model_identity(policy)["sha256"]
    write_manifest(policy, {"stage": "training", "status": "complete"})
    assert model_identity(policy)["sha256"] == before
    (policy / "config.json").write_text((policy / "config.json").read_text() + " ")
    assert model_identity(policy)["sha256"] != before
