"""Config loading shared by every entry point: YAML file + `key=value` overrides -> pydantic.

    python -m <stage> --input IN --output OUT [--config FILE] [key=value ...]

Overrides use dotted keys for nesting (`vllm.enforce_eager=true`); values are parsed as YAML
scalars (`k=8`, `eta=0.9`, `stop=[a,b]`). Every validation error is reported at once, each with
the field, the value given and what is allowed.
"""

from __future__ import annotations

import argparse
import enum
import functools
import json
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError

from rsdpo.errors import InputError, MissingInput
from rsdpo.logs import add_log_level

M = TypeVar("M", bound=BaseModel)


class ConfigError(InputError):
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


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, or a ConfigError naming the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise MissingInput(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def validate(cls: type[M], data: dict[str, Any], source: str) -> M:
    """`cls` from plain data, every validation error reported at once as one ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def load_config(cls: type[M], path: str | Path | None = None, overrides: list[str] | dict | None = None) -> M:
    """Build `cls` from an optional YAML file of that model + `key=value` overrides. A stage entry
    point given a run config uses cluster.config.stage_config, which validates the run whole."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "config"
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data = deep_merge(data, extra)
        source = f"{source} + overrides" if path else "overrides"
    return validate(cls, data, source)


def exits_2_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap an entry point's main: an InputError (bad config, prompt file, shard, missing model)
    prints `error: ...` and exits 2, as README promises, instead of a traceback."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


class ConfigKey(NamedTuple):
    key: str            # dotted, as an override names it (`generation.k`); `[]` marks a list's items
    type: str           # e.g. `int >= 2`, `rs-dpo | best-worst`, `str | null`
    default: str        # as YAML would write it
    description: str    # the Field's description (a section's: its model's docstring)


_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="), (annotated_types.Lt, "lt", "<"),
           (annotated_types.Le, "le", "<="))


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict or tp is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(str(m.value) for m in tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _yaml_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
        value = [v.model_dump(mode="json", exclude_defaults=True) for v in value]
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | list | dict):
        return json.dumps(value)
    return str(value)


def _model_of(tp: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the BaseModel inside `tp` -- `M`, `M | None` or `list[M]` --, whether it is a list), else (None, False)."""
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if typing.get_origin(arg) is list and (inner := _model_of(typing.get_args(arg)[0])[0]) is not None:
            return inner, True
    return None, False


def config_keys(model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[ConfigKey]:
    """Every key of `model` with its type, default and description; nested sections flattened (dotted).

    Defaults come from `defaults` (an instance), so a section built by a default factory with other
    values than its class (EvaluationConfig.generation) shows the values it really gets."""
    defaults = model.model_construct() if defaults is None else defaults
    keys = []
    for name, field in model.model_fields.items():
        value = getattr(defaults, name)
        sub, is_list = _model_of(field.annotation)
        limits = [f"{sym} {getattr(m, attr)}" for m in field.metadata for cls, attr, sym in _BOUNDS
                  if isinstance(m, cls)]
        limits += [f"matching {m.pattern}" for m in field.metadata if getattr(m, "pattern", None)]
        type_name = _type_name(field.annotation) + (f" ({', '.join(limits)})" if limits else "")
        description = field.description or ((sub.__doc__ or "").strip().split("\n")[0] if sub else "")
        if sub is None:
            keys.append(ConfigKey(prefix + name, type_name, _yaml_value(value), description))
            continue
        if field.description or value is None or is_list:
            keys.append(ConfigKey(prefix + name, type_name, _yaml_value(value) if value is None or is_list
                                  else "(section)", description))
        item = value[0] if is_list and value else (None if is_list or value is None else value)
        keys.extend(config_keys(sub, f"{prefix}{name}{'[]' if is_list else ''}.", item))
    return keys


def config_help(sections: dict[str, type[BaseModel]]) -> str:
    """An argparse epilog listing the config keys of `sections` ({key prefix: model}), from the models."""
    lines = ["config keys (in the YAML file, or as key=value overrides; dotted keys reach nested sections):"]
    for prefix, model in sections.items():
        for k in config_keys(model, prefix):
            lines.append(f"  {k.key}: {k.type} = {k.default}")
            lines += textwrap.wrap(k.description, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def stage_parser(description: str, sections: dict[str, type[BaseModel]]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, epilog=config_help(sections),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="input file or shard folder")
    ap.add_argument("--output", required=True, help="output shard folder")
    ap.add_argument("--config", help="YAML config (a run config's stage section is picked up too)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting")
    add_log_level(ap)
    return ap
