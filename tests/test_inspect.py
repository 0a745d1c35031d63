"""`rsdpo inspect` on a run folder whose figures are worked by hand (pairs made by the pairing stage's
own code; the run manifest as the pipeline writes its keys). The real pipeline's folder is inspected
in tests/integration/test_pipeline.py."""

import json

from cluster.inspect_run import inspect_run, main
from generation import schema as g
from generation.quarantine import write_quarantine
from pairing.__main__ import run as pair_folder
from pairing.config import PairingConfig
from rewarding import schema as rs
from rsdpo.manifest import write_manifest
from rsdpo.shards import shard_path, write_shard

TAU, ETA = 0.1, 0.85      # raw threshold 0.1 * ln(0.85 / 0.15) = 0.17346


def _row(pid, rewards, tokens, error=None):
    texts = [f"{pid} reply {j}" for j in range(len(rewards))]
    return {g.PROMPT_ID: pid, g.PROMPT: [{"role": "user", "content": f"question {pid}"}], g.REFERENCE: None,
            g.SOURCE: "test", g.RESPONSES: texts, g.FINISH_REASONS: ["stop"] * len(texts), g.NUM_TOKENS: tokens,
            g.PROMPT_TOKENS: 3, g.SEED: 0, g.ERROR: error, rs.REWARDS: rewards,
            rs.REWARD_MEAN: sum(rewards) / len(rewards) if rewards else None, rs.REWARD_STD: None,
            rs.REWARD_MIN: min(rewards) if rewards else None, rs.REWARD_MAX: max(rewards) if rewards else None}


def _run_folder(tmp_path, manifest_tau=TAU):
    """p0: gaps 0.5 and 0.48 over r0 pass (2 pairs, chosen 9 tokens vs 5); p1: both 1.0 beat 0.0 (2 pairs,
    chosen 4 tokens vs 8); p2: all tied (0 pairs); p3: an error row. Candidates: 3 usable x 3 * 2 = 18."""
    import pyarrow as pa

    out = tmp_path / "run"
    write_shard(pa.Table.from_pylist([_row("p0", [0.0, 0.5, 0.48], [5, 9, 9]), _row("p1", [1.0, 1.0, 0.0], [4, 4, 8])],
                                     schema=rs.SCORED_SCHEMA), shard_path(out / "scored", "shard-00000"), rs.SCORED_SCHEMA)
    write_shard(pa.Table.from_pylist([_row("p2", [0.1, 0.1, 0.1], [3, 3, 3]),
                                      _row("p3", [], [], error="prompt_too_long: 3000 tokens > 512")],
                                     schema=rs.SCORED_SCHEMA), shard_path(out / "scored", "shard-00001"), rs.SCORED_SCHEMA)
    config = PairingConfig(tau=TAU, eta=ETA)
    pair_folder(str(out / "scored"), str(out / "pairs"), config)
    write_quarantine(out, [{"source": "p.jsonl", "line": 4, "field": None, "reason": "line 4: malformed JSON"}])
    write_manifest(out, {
        "stage": "pipeline", "fingerprint": "f00", "models": {"policy": {"path": "tiny", "sha256": "a"}},
        "config": {"pairing": config.model_copy(update={"tau": manifest_tau}).model_dump(mode="json")},
        "counts": {"prompts_in": 5, "rows_out": 3, "row_errors": 1, "quarantined": 1, "shards": 2,
                   "shards_planned": 2, "pairs": 4, "prompts_with_pairs": 2, "balanced": True},
        "throughput": {"wall_s": 10.0, "prompts_per_s": 0.4, "busy_s": {"sample": 5.0, "score": 1.0, "pair": 0.01}},
        "warnings": [],
    })
    return out


def test_figures_match_the_hand_worked_run(tmp_path):
    r = inspect_run(_run_folder(tmp_path))
    assert r["pairs"]["pairs"] == 4 and r["pairs"]["usable_prompts"] == 3 and r["pairs"]["prompts_with_pairs"] == 2
    assert r["pairs"]["prompts_by_pair_count"] == {"0": 1, "2": 2}
    assert r["acceptance"] == {"candidate_ordered_pairs": 18, "accepted_by_rule": 4, "rate": 0.2222, "written": 4}
    assert r["errors"]["by_kind"] == {"prompt_too_long": 1}
    assert r["quarantine"]["rows"] == 1 and "malformed JSON" in r["quarantine"]["examples"][0]
    assert r["reward_spread"]["prompts"] == 3 and r["reward_spread"]["above_threshold"] == 2
    assert r["reward_spread"]["max"] == 1.0 and r["reward_spread"]["min"] == 0.0
    assert r["lengths"]["chosen_tokens"]["mean"] == 6.5 and r["lengths"]["rejected_tokens"]["mean"] == 6.5
    assert r["lengths"]["chosen_longer_share"] == 0.5
    assert r["warnings"] == []


def test_text_and_json_forms(tmp_path, capsys):
    out = _run_folder(tmp_path)
    assert main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "acceptance  rs-dpo at eta=0.85, tau=0.1 (raw gap > 0.1735): 4 of 18 candidate ordered pairs (22.2%)" in text
    assert "prompt_too_long (1): p3: prompt_too_long: 3000 tokens > 512" in text
    assert "warnings    none" in text
    assert main([str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"]["pairs"] == 4


def test_pairs_out_of_step_with_their_scored_shards_are_reported(tmp_path):
    r = inspect_run(_run_folder(tmp_path, manifest_tau=0.3))   # threshold 0.52: only p1's two pairs pass
    assert any("pairs/ holds 4 pairs but its scored shards give 2" in w for w in r["warnings"])


def test_not_a_run_folder(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_a_chain_folder_is_inspected_round_by_round(tmp_path, capsys):
    chain = tmp_path / "chain"
    chain.mkdir()
    rounds = []
    for i in (1, 2):
        _run_folder(tmp_path / f"r{i}").rename(chain / f"round-{i}")
        rounds.append({"round": i, "sampled_from": "sft" if i == 1 else "round-1/policy", "dir": str(chain / f"round-{i}"),
                       "training": {"metrics": {"train_loss": 0.69 - i / 100}}, "evaluation": {"overall": {"win_rate": 0.5}}})
    write_manifest(chain, {"stage": "chain", "rounds": rounds})
    report = inspect_run(chain)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(r["acceptance"]["accepted_by_rule"] == 4 for r in report["rounds"])
    assert main([str(chain)]) == 0
    text = capsys.readouterr().out
    assert "=== round 2 (sampled from round-1/policy) ===" in text and '"train_loss": 0.67' in text
