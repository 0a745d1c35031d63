"""Fuzz: generated malformed prompt files never crash without a message and never lose a row
(rows in = rows out + quarantined)."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generation.config import PromptsConfig
from generation.prompts import PromptError, load_prompts

text = st.text(max_size=20)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", ""]),
                                 "content": st.one_of(text, st.integers(), st.none())})
row = st.one_of(
    st.fixed_dictionaries({"prompt": st.one_of(text, st.lists(message, max_size=3), st.integers(), st.none())},
                          optional={"prompt_id": st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 3),
                                                           st.lists(st.integers(), max_size=1)),
                                    "reference": st.one_of(text, st.integers())}),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=3)}),
    st.dictionaries(text, text, max_size=2),
    st.lists(st.integers(), max_size=2),
    text,
)
line = st.one_of(row.map(lambda r: json.dumps(r).encode()), st.binary(max_size=30),
                 st.just(b"{\"prompt\": \"ok\""), st.just(b"\xff\xfe\x00"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=12))
def test_no_row_is_silently_lost(tmp_path, lines):
    # a line-break byte inside generated binary would split a "line"; count lines as the reader sees them
    path = tmp_path / "fuzz.jsonl"
    payload = b"\n".join(lines)
    path.write_bytes(payload)
    nonblank = sum(1 for raw in payload.split(b"\n") if raw.strip())
    try:
        loaded = load_prompts(PromptsConfig(source=str(path)))
    except PromptError as e:  # a file-level problem is an error with a message, not a crash
        assert str(path) in str(e)
        return
    assert loaded.table.num_rows + len(loaded.rejects) == nonblank
    for r in loaded.rejects:
        assert str(path) in r["reason"] and r["reason"].split(": ", 1)[1]
    ids = loaded.table.column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids))
    for conv in loaded.table.column("prompt").to_pylist():
        assert conv[-1]["role"] == "user"


# Any JSON value, with strings from all of Unicode: lone surrogates (json.dumps writes them as
# \udXXX escapes, which json.loads turns back into unencodable str), NUL and other controls.
any_text = st.text(st.characters(codec=None, categories=None), max_size=8)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8)
# Rows that get past the outer checks and reach the field checks: right keys, junk values.
keyed = st.fixed_dictionaries(
    {"prompt": st.one_of(any_text, st.lists(st.dictionaries(st.sampled_from(["role", "content"]), json_value,
                                                            max_size=2) | json_value, max_size=3), json_value)},
    optional={"prompt_id": st.one_of(any_text, st.integers(min_value=-2**80, max_value=2**80), json_value),
              "reference": st.one_of(any_text, json_value), "_source": json_value, "messages": json_value})
hostile_line = st.one_of(
    keyed.map(json.dumps), json_value.map(json.dumps),
    st.builds(lambda t: json.dumps({"prompt": "x" + t + "y", "prompt_id": t}), any_text),
    st.sampled_from([
        '{"prompt": "a\\ud800b"}',                              # unpaired high surrogate
        '{"prompt": [{"role": "user", "content": "\\udfff"}]}',  # unpaired low surrogate, in a message
        '{"prompt": "ok", "reference": "\\ud83d"}',             # in the reference
        '{"prompt": "ok", "prompt_id": "\\udc00"}',             # in the id
        '{"prompt": "nul \\u0000 inside"}',
        '{"prompt": [{"role": ["user"], "content": "x"}]}',     # an unhashable role
        '{"prompt": "big id", "prompt_id": ' + "9" * 5000 + "}",  # past Python's int-string limit
        "[" * 50_000 + "]" * 50_000,                             # deeper than the JSON decoder recurses
        '{"prompt": "s", "_source": [1, 2]}',
    ]),
).map(str.encode)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(hostile_line, min_size=1, max_size=10))
def test_hostile_rows_never_raise_and_counts_balance(tmp_path, lines):
    path = tmp_path / "hostile.jsonl"
    payload = b"\n".join(lines) + b"\n"
    path.write_bytes(payload)
    nonblank = sum(1 for raw in payload.split(b"\n") if raw.strip())
    loaded = load_prompts(PromptsConfig(source=str(path)))  # never raises on a row
    assert loaded.table.num_rows + len(loaded.rejects) == nonblank
    for r in loaded.rejects:
        assert r["line"].startswith(f"{path}:") and r["reason"].startswith(r["line"])
        json.dumps(r).encode()  # every reject can be written to quarantine.jsonl
    # what is kept is valid text everywhere (Parquet and the tokenizer need UTF-8)
    for row in loaded.table.to_pylist():
        row["prompt_id"].encode() and [m["content"].encode() for m in row["prompt"]]
