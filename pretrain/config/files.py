"""Reading config files, apart from what they hold: YAML with `base:` chains and `section.key=value`
overrides, into one plain dict (typed.py turns it into dataclasses).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import yaml

from pretrain.errors import ConfigError


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
