"""Reading config files, apart from what they hold: YAML with `base:` chains and `section.key=value`
overrides, into one plain dict (typed.py turns it into dataclasses).

A config file is read whole as UTF-8 from a regular file, and its YAML is bounded before anything walks
it (the "billion laughs" alias bomb, a nesting that would overflow Python's stack): see the limits below
and docs/configuration.md.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

import yaml

from pretrain.config.typed import refuse_control_characters
from pretrain.errors import ConfigError

MAX_BYTES = 1 << 20
"""At most this many bytes in one config file (1 MiB; the shipped recipes are about 1 KiB)."""
MAX_BASE_DEPTH = 32
"""At most this many files in one `base:` chain (the file itself included)."""
MAX_ALIASES = 256
"""At most this many YAML aliases (`*name`) in one file."""
MAX_NESTING = 64
"""At most this many levels of nested mappings/lists in one file, with every alias expanded."""
MAX_NODES = 100_000
"""At most this many YAML nodes (keys, values, items) in one file, with every alias expanded."""


def read_config_dict(path: str, overrides: Sequence[str] = ()) -> dict:
    """The YAML at `path` merged over its `base:` file, with `section.key=value` overrides applied, as a
    plain dict (not validated yet: `config_from_dict` does that).

    The one loader of config files: the trainer and the launcher (launcher/job_config.py) both read
    through it, so a file one accepts the other accepts too. Raises ConfigError naming the file or
    override at fault (a missing file or one that is not a regular file, over MAX_BYTES, bytes that are
    not UTF-8, invalid YAML, YAML over the limits above, a `base:` that is not one path, a cycle or a
    chain longer than MAX_BASE_DEPTH).
    """
    raw = _read_yaml_with_bases(path)
    for item in overrides:
        _apply_override(raw, item)
    return raw


def _read_yaml_with_bases(path: str) -> dict:
    """The file at `path` merged over its chain of `base:` files, read in a loop (no recursion)."""
    top = path
    chain: list[dict] = []
    seen: list[str] = []
    while True:
        if len(seen) == MAX_BASE_DEPTH:
            raise ConfigError(
                f"{top}: the `base:` chain is longer than {MAX_BASE_DEPTH} files (the next would be "
                f"{path}); flatten it into fewer files"
            )
        real = os.path.realpath(path)
        if real in seen:
            cycle = " -> ".join(seen + [real])
            raise ConfigError(f"{path}: `base:` files include each other in a cycle: {cycle}")
        raw = read_yaml_mapping(path)
        seen.append(real)
        base = raw.pop("base", None)
        chain.append(raw)
        if base is None:
            break
        if not isinstance(base, str):
            raise ConfigError(f"{path}: `base` must be a file path, got {base!r}")
        try:
            refuse_control_characters(base, "base")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    merged = chain.pop()
    while chain:
        merged = deep_merge(merged, chain.pop())
    return merged


def read_yaml_mapping(path: str) -> dict:
    """One YAML file's top-level mapping, read within the bounds above (size, aliases, nesting, expanded
    values) and without blocking on a FIFO; ConfigError naming the file for anything unreadable."""
    text = _read_text(path)
    try:
        raw = _load_bounded(text, path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML {_yaml_problem(exc)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def _read_text(path: str) -> str:
    """The file's text. Opened without blocking and checked to be a regular file before it is read (a
    FIFO or a device would hang the reader or never end); decoded as UTF-8, naming the first bad byte."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the config file: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path}: is {_file_kind(mode)}, not a regular file; pass --config a YAML file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes; a config file is small, is this one?")
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason}); save the config as UTF-8"
        ) from None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while composing (PyYAML's composer recurses once per
    level, so an unbounded nesting is a RecursionError)."""

    def __init__(self, stream: str, path: str) -> None:
        super().__init__(stream)
        self._path = path
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"{self._path}: more than {MAX_ALIASES} YAML aliases (line {mark.line + 1}); "
                    "a config needs few, write the values out"
                )
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"{self._path}: YAML nested deeper than {MAX_NESTING} levels (line {mark.line + 1})"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_bounded(text: str, path: str):
    """yaml.safe_load of `text`, refusing (ConfigError naming `path`) YAML over MAX_ALIASES aliases, or
    whose node graph, with every alias expanded, is over MAX_NESTING deep or MAX_NODES big or refers to
    itself. The expanded size is counted on the composed graph (each node once, with its size
    remembered), so a billion laughs is refused in microseconds, before anything expands it."""
    loader = _BoundedLoader(text, path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded(root: yaml.Node, path: str) -> None:
    """Size and depth of the graph under `root` as if every alias were copied out; an iterative
    post-order walk memoised per node, so shared nodes cost once and nothing recurses."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth) with aliases expanded
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            kids = [done[id(c)] for c in _children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            if size > MAX_NODES:
                raise ConfigError(
                    f"{path}: YAML expands to more than {MAX_NODES} values (aliases repeat "
                    f"their anchors; line {node.start_mark.line + 1}); is it an alias bomb?"
                )
            if depth > MAX_NESTING:
                raise ConfigError(
                    f"{path}: YAML nests deeper than {MAX_NESTING} levels once its aliases are expanded "
                    f"(line {node.start_mark.line + 1})"
                )
            open_.discard(key)
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in open_:
            raise ConfigError(
                f"{path}: a YAML alias refers to a mapping or list that contains it "
                f"(line {node.start_mark.line + 1}); a config cannot be recursive"
            )
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise ConfigError(
                    f"{path}: a YAML alias refers to a mapping or list that contains it "
                    f"(line {child.start_mark.line + 1}); a config cannot be recursive"
                )
            if id(child) not in done:
                stack.append((child, False))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """YAML's error on one line: `at line L, column C: problem (context)`; its own message spans several."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:
        return ": " + " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return where + (f" ({context})" if context else "")


def deep_merge(base: dict, top: dict) -> dict:
    """`base` with `top`'s keys put over it, nested dicts merged key by key (`top` wins)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    try:
        value = _load_bounded(text, f"override {item!r}") if text else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML {_yaml_problem(exc)}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = value
