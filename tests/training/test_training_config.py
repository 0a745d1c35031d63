"""TrainingConfig parsing, the DeepSpeed config files and the `dpo` pass-through (fast tier)."""

import json

import pytest
import yaml

from cluster.config import stage_config
from rsdpo.cli import ConfigError, load_config
from training.config import CONFIGS_DIR, DEFAULT_DPO, DeepSpeed, Existing, TrainingConfig


def test_defaults_follow_the_paper():
    c = TrainingConfig()
    assert c.beta == 0.1 and c.reference_model is None  # SFT policy as the frozen reference
    assert c.precompute_ref_log_probs is True
    assert c.deepspeed is DeepSpeed.NONE and c.existing is Existing.RESUME
    assert c.dpo_kwargs() == DEFAULT_DPO


def test_overrides_and_dpo_pass_through():
    c = load_config(TrainingConfig, overrides=["deepspeed=zero3", "beta=0.2", "dpo.max_steps=5",
                                               "dpo.per_device_train_batch_size=2", "lora.r=8"])
    assert c.deepspeed is DeepSpeed.ZERO3 and c.beta == 0.2 and c.lora == {"r": 8}
    kw = c.dpo_kwargs()
    assert kw["max_steps"] == 5 and kw["per_device_train_batch_size"] == 2
    assert kw["report_to"] == DEFAULT_DPO["report_to"]  # defaults kept under the user's keys


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(TrainingConfig, overrides=["deepspeed=zero4", "beta=0", "modle=x", "dpo.beta=1"])
    msg = str(e.value)
    assert "4 config error(s)" in msg
    assert "deepspeed" in msg and "beta" in msg and "modle: unknown key" in msg and "dpo.beta -> use" in msg


def test_dpo_may_not_shadow_owned_fields():
    with pytest.raises(ConfigError, match=r"dpo.beta -> use `beta`"):
        load_config(TrainingConfig, overrides=["dpo.beta=0.5"])
    with pytest.raises(ConfigError, match=r"dpo.output_dir -> use `--output`"):
        load_config(TrainingConfig, overrides=["dpo.output_dir=/tmp/x"])


def test_unknown_dpo_key_is_refused_by_name(tmp_path):
    from training.train import dpo_config

    c = TrainingConfig(dpo={"max_stpes": 3})
    with pytest.raises(ConfigError, match=r"unknown trl.DPOConfig key\(s\) \['max_stpes'\]"):
        dpo_config(c, tmp_path)


def test_dpo_config_carries_owned_fields(tmp_path):
    from training.train import dpo_config

    c = TrainingConfig(beta=0.3, max_length=96, seed=7, deepspeed="zero2", dpo={"max_steps": 3})
    args = dpo_config(c, tmp_path)
    assert (args.beta, args.max_length, args.seed, args.max_steps) == (0.3, 96, 7, 3)
    assert args.precompute_ref_log_probs is True
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert args.deepspeed == str(CONFIGS_DIR / "ds_zero2.json")


@pytest.mark.parametrize("stage", [DeepSpeed.ZERO2, DeepSpeed.ZERO3])
def test_deepspeed_files(stage):
    ds = json.loads(stage.config_file().read_text())
    assert ds["zero_optimization"]["stage"] == int(stage.value[-1])
    # transformers raises a mismatch unless bf16.enabled is "auto" or equals the Trainer's flag.
    assert ds["bf16"]["enabled"] == "auto"
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] == "auto"
    if stage is DeepSpeed.ZERO3:  # else save_model writes no weights under ZeRO-3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert DeepSpeed.NONE.config_file() is None


def test_every_training_yaml_parses_and_names_its_command():
    files = sorted(CONFIGS_DIR.glob("*.yaml"))
    assert files
    for f in files:
        assert f.read_text().startswith("# python -m training"), f"{f}: first line must give the command"
        assert isinstance(yaml.safe_load(f.read_text()), dict)
        stage_config("training", f)


def test_yaml_exponents_without_a_dot_become_floats(tmp_path):
    from training.train import dpo_config

    # `dpo.learning_rate=1e-3` parses as the string "1e-3" under YAML 1.1.
    c = load_config(TrainingConfig, overrides=["dpo.learning_rate=1e-3"])
    assert dpo_config(c, tmp_path).learning_rate == 1e-3
    with pytest.raises(ConfigError, match="learning_rate = 'fast'"):
        dpo_config(TrainingConfig(dpo={"learning_rate": "fast"}), tmp_path)
