"""Reading configs, apart from what they hold: YAML files with `base:` chains, `section.key=value`
overrides, and the strict build of a dataclass tree from plain dicts (unknown keys named with the closest
valid one, values checked against their type hints). pretrain/config/loader.py defines the sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names the file or key and what to do."""


def read_config_dict(path: str, overrides: Sequence[str] = ()) -> dict:
    """The YAML at `path` merged over its `base:` file, with `section.key=value` overrides applied, as a
    plain dict (not validated yet: `config_from_dict` does that).

    The one loader of config files: the trainer and the launcher (launcher/job_config.py) both read
    through it, so a file one accepts the other accepts too. Raises ConfigError naming the file or
    override at fault (a missing file, invalid YAML, a `base:` that is not one path, a cycle).
    """
    raw = _read_yaml_with_bases(path, seen=())
    for item in overrides:
        _apply_override(raw, item)
    return raw


def _read_yaml_with_bases(path: str, seen: tuple[str, ...]) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    real = os.path.realpath(path)
    if real in seen:
        raise ConfigError(
            f"{path}: `base:` files include each other in a cycle: {' -> '.join(seen + (real,))}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML {_yaml_problem(exc)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a file path, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    return _deep_merge(_read_yaml_with_bases(base_path, seen + (real,)), raw)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """YAML's error on one line: `at line L, column C: problem (context)`; its own message spans several."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return ": " + " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return where + (f" ({context})" if context else "")


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML {_yaml_problem(exc)}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = value


def build_dataclass(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from the plain dict `raw`, each key checked and each value coerced to
    its type hint (nested dataclasses recursively); `prefix` is the key path so far, for messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {prefix}{key}{hint}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = build_dataclass(hint_type, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint_type, f"{prefix}{key}")
    return cls(**kwargs)


class _NonFiniteError(ConfigError):
    """A float key got inf or nan: named as such, not as 'expected float or null'."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type hint `tp` (int, float, bool, str, dict, Literal, tuple, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except _NonFiniteError:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it obviously is
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None:
            if not math.isfinite(number):  # .inf, "inf", "nan", 1e400 (overflows to inf)
                raise _NonFiniteError(f"{key}: expected a finite number, got {value!r}")
            return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str, dict, list) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r} ({type(value).__name__})")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))
