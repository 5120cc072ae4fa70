"""The strict build of a dataclass tree from plain dicts (as read from YAML): every key checked, unknown keys
named with the closest valid one, every value checked against its type hint.

Type hints it understands: int, float (finite; "1e-4" read as the number), bool, str (no control
characters), dict, list, a `list[X]` (X any of these, a dataclass included: each item is checked as its
own section, `key[i].field`), Literal, tuple, optional (`X | None`), nested dataclasses, and a section
whose dataclass is chosen by one of its keys:
`Annotated[Base, ChosenBy("arch", {"bert": BertModelConfig, ...}, default="bert")]`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pretrain.errors import ConfigError


@dataclass(frozen=True)
class ChosenBy:
    """Marks a section whose dataclass is chosen by the value of its key `key`, e.g. `model.arch`.

    `choices` maps each allowed value to its dataclass (which has `key` as a Literal field of that one
    value); `default` is the choice when the key is absent.
    """

    key: str
    choices: Mapping[str, type]
    default: str

    def choose(self, raw: Any, prefix: str) -> type:
        """The dataclass `raw` (a mapping) asks for; raises ConfigError naming the key and the choices."""
        name = raw.get(self.key, self.default) if isinstance(raw, dict) else self.default
        if name not in self.choices:
            known = ", ".join(repr(c) for c in self.choices)
            raise ConfigError(f"{prefix}{self.key}: expected one of {known}, got {name!r}")
        return self.choices[name]


def chosen_by(hint: Any) -> ChosenBy | None:
    """The ChosenBy of an `Annotated[..., ChosenBy(...)]` type hint, else None."""
    if typing.get_origin(hint) is typing.Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, ChosenBy)), None)
    return None


def section_hints(cls: type) -> dict[str, Any]:
    """The type hints of dataclass `cls`, with `Annotated` metadata kept (ChosenBy lives there)."""
    return typing.get_type_hints(cls, include_extras=True)


def build_dataclass(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from the plain dict `raw`, each key checked and each value coerced to
    its type hint (nested dataclasses recursively); `prefix` is the key path so far, for messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'} must be a mapping, got {raw!r}")
    hints = section_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {prefix}{key}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    if not prefix.endswith("]."):
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # an item of a list: say which one (its checks name only its own keys)
        raise ConfigError(f"{prefix.rstrip('.')}: {exc}") from None


class _RefusedValueError(ConfigError):
    """A value of the right type that is refused (inf or nan for a float, a control character in a
    string): named as such, not as 'expected float or null'."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type hint `tp` (see the module docstring for the hints understood)."""
    choice = chosen_by(tp)
    if choice is not None:
        return build_dataclass(choice.choose(value, f"{key}."), value, prefix=f"{key}.")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except _RefusedValueError:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {describe_type(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {describe_type(tp)}, got {value!r} ({type(value).__name__})")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it obviously is
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None:
            if not math.isfinite(number):  # .inf, "inf", "nan", 1e400 (overflows to inf)
                raise _RefusedValueError(f"{key}: expected a finite number, got {value!r}")
            return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        refuse_control_characters(value, key)
        return value
    if tp in (bool, dict, list) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {describe_type(tp)}, got {value!r} ({type(value).__name__})")


def to_plain(tree: Any) -> Any:
    """A dataclass tree as plain nested dicts/lists/scalars (tuples become lists), as YAML reads it."""
    return json.loads(json.dumps(dataclasses.asdict(tree)))


def refuse_control_characters(value: str, key: str) -> None:
    """A string key (a path, a name, a choice) holding a control character (U+0000-U+001F, U+007F-U+009F:
    a NUL from a YAML `"\\0"` escape that os.makedirs would meet as a traceback, a newline, a tab, an
    escape sequence) is refused naming the key and the code point."""
    for i, ch in enumerate(value):
        if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            raise _RefusedValueError(
                f"{key}: holds control character U+{ord(ch):04X} at position {i} of {value!r}; "
                "a path or name cannot hold one, remove it"
            )


def describe_type(tp: Any) -> str:
    """A type hint in words, as messages and docs/configuration.md show it ("int or null", "one of ...")."""
    choice = chosen_by(tp)
    if choice is not None:
        return f"a section chosen by its {choice.key}"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is list:
        (item,) = typing.get_args(tp)
        what = "sections" if dataclasses.is_dataclass(item) else describe_type(item)
        return f"a list of {what}"
    if dataclasses.is_dataclass(tp):
        return "a section"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))
