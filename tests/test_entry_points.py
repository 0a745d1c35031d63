"""Every stage entry point reads a run config the way the job does, and reports bad input as one line
and exit 2 (README 'Failure modes'), never a traceback."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cluster.config import stage_config
from pairing.schema import PAIRS_SCHEMA
from rsdpo.cli import ConfigError


def _run_config(tmp_path, **sections) -> str:
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(sections))
    return str(f)


def test_a_stage_given_a_run_config_validates_the_whole_run(tmp_path):
    # The pairing stage alone would accept this file's pairing section; the run it describes is
    # invalid (k=1 in generation), and a stage must not run a section of an invalid run.
    f = _run_config(tmp_path, generation={"k": 1}, pairing={"tau": 0.1})
    with pytest.raises(ConfigError, match=r"generation\.k = 1"):
        stage_config("pairing", f)


def test_cross_stage_rules_see_the_stage_overrides(tmp_path):
    f = _run_config(tmp_path, generation={"max_tokens": 128})
    with pytest.raises(ConfigError, match="rewarding.max_length=64 < generation.max_tokens=128"):
        stage_config("rewarding", f, ["max_length=64"])
    assert stage_config("rewarding", f, ["max_length=256"]).max_length == 256


def test_the_runs_seed_reaches_every_stage_run_alone(tmp_path):
    f = _run_config(tmp_path, seed=7, prompts={"split": "train"}, generation={"k": 4}, training={"beta": 0.2},
                    evaluation={})
    assert stage_config("generation", f).seed == 7
    assert stage_config("pairing", f).seed == 7
    assert stage_config("training", f).seed == 7
    assert stage_config("evaluation", f).seed == 7
    assert stage_config("generation", f, ["seed=9"]).seed == 9  # a stage's seed= override is the run's
    # a run config without the (optional) training section: the stage's defaults, with the run's seed
    g = _run_config(tmp_path, seed=5, generation={"k": 4})
    assert stage_config("training", g, ["beta=0.3"]).model_dump() | {} == \
        stage_config("training", None, ["beta=0.3", "seed=5"]).model_dump()


def test_eval_reads_the_evaluation_section_of_a_run_config(tmp_path):
    from training.eval import main

    f = _run_config(tmp_path, prompts={"split": "train"}, training={}, evaluation={"bootstrap": 50})  # bootstrap must be >= 100
    assert main(["--sft", "x", "--policy", "y", "--output", str(tmp_path / "e"), "--config", f]) == 2


def test_a_stage_file_that_is_not_a_run_config_is_the_stages_own(tmp_path):
    f = tmp_path / "pairing.yaml"
    f.write_text("tau: 0.05\neta: 0.9\n")
    c = stage_config("pairing", f)
    assert (c.tau, c.eta) == (0.05, 0.9)


def _prompts(tmp_path) -> str:
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"prompt": "hi"}) + "\n")
    return str(p)


def test_missing_models_exit_2_with_the_path(tmp_path, capsys):
    from generation.__main__ import main as generate
    from rewarding.__main__ import main as reward

    missing = str(tmp_path / "no-such-model")
    assert generate(["--input", _prompts(tmp_path), "--output", str(tmp_path / "s"), f"model={missing}"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    samples = tmp_path / "samples"
    samples.mkdir()
    assert reward(["--input", str(samples), "--output", str(tmp_path / "r"), f"model={missing}"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_training_on_no_pairs_exits_2(tmp_path, capsys):
    from training.__main__ import main as train

    empty = tmp_path / "pairs"
    empty.mkdir()
    assert train(["--input", str(empty), "--output", str(tmp_path / "m")]) == 2
    assert "pairs" in capsys.readouterr().err
    pq.write_table(pa.Table.from_pylist([], schema=PAIRS_SCHEMA), empty / "shard-00000.parquet")
    assert train(["--input", str(empty), "--output", str(tmp_path / "m")]) == 2
    assert "0 pairs" in capsys.readouterr().err
