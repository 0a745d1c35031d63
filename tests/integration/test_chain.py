"""The RS-DPO chain (`python -m cluster.run` with a training: section) on a tiny model: two rounds with
round_reference: previous, then re-runs that reuse only what is the same work.

    python -m pytest tests/integration/test_chain.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rsdpo.manifest import read_manifest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def chain(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "cluster.run", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc


@pytest.fixture(scope="module")
def two_rounds(tiny_policy, tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Name {i} things that are {c}.", "prompt_id": f"c{i}"}) + "\n"
                               for i, c in enumerate(["red", "cold", "loud", "soft", "old", "new"])))
    cfg = {
        "output_dir": str(d / "out"), "seed": 1, "shard_size": 6,
        "prompts": {"source": str(prompts)},
        "generation": {"model": str(tiny_policy), "k": 4, "max_tokens": 12, "max_model_len": 256},
        "rewarding": {"max_length": 64},
        "pairing": {"tau": 0.02, "eta": 0.85},
        "resources": {"num_cpus": 2},
        "training": {"max_length": 64, "num_workers": 1,
                     "dpo": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                             "logging_steps": 1}},
        "rounds": 2, "round_reference": "previous",
    }
    config = d / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config, Path(cfg["output_dir"]), chain(config)


def test_round_two_samples_from_and_is_held_to_round_one(two_rounds, tiny_policy):
    _, out, _ = two_rounds
    rounds = read_manifest(out)["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    one, two = (read_manifest(out / f"round-{i}" / "policy") for i in (1, 2))
    assert rounds[1]["sampled_from"] == str(out / "round-1" / "policy")
    assert read_manifest(out / "round-2")["models"]["policy"]["sha256"] == one["models"]["policy_out"]["sha256"]
    # round_reference: previous: round 2 starts from and is held to round 1's policy; round 1 to the SFT
    assert two["models"]["policy_in"]["sha256"] == two["models"]["reference"]["sha256"] \
        == one["models"]["policy_out"]["sha256"]
    assert one["models"]["reference"]["sha256"] == one["models"]["policy_in"]["sha256"] != \
        one["models"]["policy_out"]["sha256"]
    assert one["metrics"]["global_step"] == two["metrics"]["global_step"] == 2


def test_the_same_config_reuses_a_new_learning_rate_or_fresh_retrains(two_rounds):
    """Before, an existing policy was reused whatever the config: a new learning rate, or --fresh (which
    regenerated the data), reported the old policy."""
    config, out, _ = two_rounds
    written = {i: read_manifest(out / f"round-{i}" / "policy")["written_at"] for i in (1, 2)}
    again = chain(config)
    assert again.stdout.count("reusing the policy") == 2 and "DPO on" not in again.stdout
    assert {i: read_manifest(out / f"round-{i}" / "policy")["written_at"] for i in (1, 2)} == written

    changed = chain(config, "training.dpo.learning_rate=0.0005", "rounds=1")
    assert "holds a run of other work (differs in: dpo); training again" in changed.stdout
    one = read_manifest(out / "round-1" / "policy")
    assert one["dpo_config"]["learning_rate"] == 5e-4 and one["written_at"] != written[1]
    assert one["work"]["config"]["dpo"]["learning_rate"] == 5e-4

    # --fresh redoes the round: its data and its policy, though the work is the same.
    fresh = chain(config, "--fresh", "training.dpo.learning_rate=0.0005", "rounds=1")
    assert "0 already committed" in fresh.stdout and "DPO on" in fresh.stdout
    assert read_manifest(out / "round-1" / "policy")["written_at"] != one["written_at"]
