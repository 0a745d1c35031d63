"""Config loading shared by every entry point: YAML file + `key=value` overrides -> pydantic.

    python -m <stage> --input IN --output OUT [--config FILE] [key=value ...]

Overrides use dotted keys for nesting (`vllm.enforce_eager=true`); values are parsed as YAML
scalars (`k=8`, `eta=0.9`, `stop=[a,b]`). Every validation error is reported at once, each with
the field, the value given and what is allowed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
# Top-level keys of a composed run config (cluster/config.py); a stage picks its own section.
RUN_SECTIONS = {"prompts", "generation", "rewarding", "pairing", "training", "resources", "output_dir"}


class ConfigError(ValueError):
    pass


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. k=8 or vllm.enforce_eager=true)")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} config error(s):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        given = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {field}: unknown key (check spelling; see README 'Config reference')")
        else:
            lines.append(f"  - {field} = {given!r}: {e['msg']}")
    return "\n".join(lines)


def load_config(cls: type[M], path: str | Path | None = None, overrides: list[str] | dict | None = None,
                section: str | None = None) -> M:
    """Build `cls` from an optional YAML file (optionally one top-level `section` of it) + overrides."""
    data: dict[str, Any] = {}
    source = "config"
    if path:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} does not exist") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        if section is not None:
            if isinstance(loaded.get(section), dict):
                loaded = loaded[section]
            elif RUN_SECTIONS & set(loaded):
                loaded = {}  # a run config without this stage's section: the stage's defaults
        data = loaded
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data = deep_merge(data, extra)
        source = f"{source} + overrides" if path else "overrides"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def stage_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="input file or shard folder")
    ap.add_argument("--output", required=True, help="output shard folder")
    ap.add_argument("--config", help="YAML config (a run config's stage section is picked up too)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting")
    return ap
