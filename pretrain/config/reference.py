"""docs/configuration.md's reference part, generated from the config dataclasses: every section (each
architecture's `model` section included), every key with its type, default and docstring, and the size
presets. `python -m pretrain.config.reference` rewrites the page below its marker line;
tests/pretrain/config/test_reference.py checks the page and the code agree.

Torch-free, like the rest of the config package.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import typing
from pathlib import Path

from pretrain.config.loader import Config
from pretrain.config.typed import chosen_by, describe_type, section_hints

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
MARKER = "<!-- Generated below by `python -m pretrain.config.reference` from the docstrings. -->"


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (a string literal right after its annotation), its
    dataclass bases' included (a subclass's own docstring of a field it redefines wins)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and documented:
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _paragraphs(cls: type) -> list[str]:
    """The class docstring's paragraphs, each on one line."""
    text = inspect.cleandoc(cls.__doc__ or "")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def _default(f: dataclasses.Field, doc: str) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value == "" and "Required." in doc:
        return "(required)"
    if value is None or isinstance(value, (bool, list, dict)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _table(cls: type, prefix: str) -> list[str]:
    hints, docs = section_hints(cls), field_docs(cls)
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) or chosen_by(hint) is not None:
            continue  # a section of its own
        doc = docs.get(f.name, "")
        rows.append(f"| `{prefix}{f.name}` | {describe_type(hint)} | {_default(f, doc)} | {doc} |")
    return rows


def _presets(cls: type, key: str) -> list[str]:
    presets = getattr(cls, "PRESETS", None)
    if not presets:
        return []
    columns = list(next(iter(presets.values())))
    rows = [f"Presets (`{key}.preset`):", "", "| preset | " + " | ".join(columns) + " |"]
    rows.append("| --- |" + " --- |" * len(columns))
    rows += [f"| `{name}` | " + " | ".join(str(v[c]) for c in columns) + " |" for name, v in presets.items()]
    return rows


def _list_items(cls: type) -> list[tuple[str, type]]:
    """(field name, item dataclass) of the fields of `cls` that are lists of sections (`data.sources`)."""
    items = []
    for name, hint in section_hints(cls).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
            items.append((name, args[0]))
    return items


def _section(cls: type, key: str, title: str, level: str = "##") -> list[str]:
    first, *notes = _paragraphs(cls)
    lines = [f"{level} {title}", "", first, "", *_table(cls, f"{key}."), ""]
    presets = _presets(cls, key)
    if presets:
        lines += [*presets, ""]
    for note in notes:
        lines += [note, ""]
    for name, item in _list_items(cls):  # each item of a list of sections has keys of its own
        lines += _section(item, f"{key}.{name}[]", f"`{key}.{name}[]`", level + "#")
    return lines


def _list_item(hint) -> type | None:
    """The dataclass of a `list[Section]` hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def reference() -> str:
    """The generated part of docs/configuration.md (Markdown)."""
    lines = ["## Top level", "", *_table(Config, ""), ""]
    hints = section_hints(Config)
    for f in dataclasses.fields(Config):
        hint = hints[f.name]
        choice = chosen_by(hint)
        if choice is not None:
            for name, cls in choice.choices.items():
                lines += _section(cls, f.name, f"`{f.name}` (`{f.name}.{choice.key}: {name}`)")
        elif dataclasses.is_dataclass(hint):
            lines += _section(hint, f.name, f"`{f.name}`")
        elif _list_item(hint) is not None:  # a list of sections: each item's keys
            lines += _section(_list_item(hint), f"{f.name}[]", f"`{f.name}[]` (each item)")
    return "\n".join(lines).rstrip() + "\n"


def page_with_reference(page: str) -> str:
    """`page` (docs/configuration.md's text) with everything below MARKER replaced by `reference()`.

    Raises ValueError when the page has no MARKER line.
    """
    head, found, _ = page.partition(MARKER)
    if not found:
        raise ValueError(f"{PAGE} has no line {MARKER!r} to generate below")
    return f"{head}{MARKER}\n\n{reference()}"


def main() -> int:
    """Rewrite docs/configuration.md below its marker line; returns the exit code."""
    PAGE.write_text(page_with_reference(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
