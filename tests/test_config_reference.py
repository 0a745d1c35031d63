"""Config help comes from the pydantic models: every command's --help lists its keys with type,
default and description, and README's config reference is the same rows (scripts/config_reference.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import RunConfig
from generation.config import GenerationConfig, PromptsConfig
from pairing.config import PairingConfig
from rewarding.config import RewardingConfig
from rsdpo.cli import config_keys
from rsdpo.console import COMMANDS, main
from training.config import EvaluationConfig, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "run": {"": RunConfig}, "submit": {"": RunConfig}, "generate": {"": GenerationConfig, "prompts.": PromptsConfig},
    "reward": {"": RewardingConfig}, "pair": {"": PairingConfig}, "sweep": {"": PairingConfig},
    "train": {"": TrainingConfig}, "eval": {"": EvaluationConfig},
}


def test_readme_config_reference_is_generated_from_the_models():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_readme_table_has_a_row_per_key():
    readme = (ROOT / "README.md").read_text()
    for k in config_keys(RunConfig):
        assert f"| `{k.key}` |" in readme, k.key


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_every_command_help_lists_its_config_keys(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for prefix, model in SECTIONS[command].items():
        for k in config_keys(model, prefix):
            assert f"  {k.key}: {k.type} = {k.default}\n" in text, f"rsdpo {command} --help lacks {k.key}"
            assert " ".join(k.description.split()[:4]) in " ".join(text.split()), k.key


def test_commands_without_config_keys_are_the_folder_readers():
    assert set(COMMANDS) - set(SECTIONS) == {"validate", "inspect"}


def test_keys_carry_types_limits_and_the_defaults_a_section_really_gets():
    keys = {k.key: k for k in config_keys(RunConfig)}
    assert keys["generation.k"].type == "int (>= 2)" and keys["generation.k"].default == "8"
    assert keys["pairing.eta"].default == "0.85"
    assert keys["pairing.strategy"].type == "rs-dpo | best-worst | best-random | all-above-margin | sigma"
    assert keys["prompts.limit"].type == "int | null (> 0)" and keys["prompts.limit"].default == "null"
    assert keys["training"].default == "null" and keys["training.beta"].default == "0.1"
    assert keys["max_error_rate"].type == "float (>= 0, <= 1)"
    ev = {k.key: k for k in config_keys(EvaluationConfig)}
    # EvaluationConfig.generation's factory samples k=2 at temperature 0.7, not GenerationConfig's own k=8.
    assert ev["generation.k"].default == "2" and ev["generation.temperature"].default == "0.7"
    assert ev["prompts"].type == "list[mapping]" and "builtin:mt_bench" in ev["prompts"].default
    assert "prompts[].source" in ev
