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
