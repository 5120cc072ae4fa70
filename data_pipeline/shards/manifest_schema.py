"""What a `manifest.json` must look like before anything trusts it: key types, ranges, and shard paths.

A manifest is untrusted input (a user may hand us one written by hand, by an old version or by an
attacker), so `check_manifest_data` runs on every load: a wrong type is one `DataError` naming the key
(`splits.train.shards[0].file`), never a TypeError deep inside a reader, and every file a manifest names
must resolve (symlinks followed) inside the shards directory.
"""

from __future__ import annotations

import json
import os

from data_pipeline.errors import DataError

REQUIRED_KEYS = ("seq_len", "mode", "id_dtype", "tokenizer", "splits")
OPTIONAL_KEYS = ("sources", "counts", "build", "format_version")
MODES = ("full-sentences", "nsp", "sop")
SPLITS = ("train", "validation")
ID_DTYPES = {"uint16": 1 << 16, "uint32": 1 << 32}  # id dtype -> ids it can hold
SHARD_KEYS = ("file", "rows", "tokens", "bytes", "sha256")
PAIR_MODES = ("nsp", "sop")  # the modes whose rows are two segments with a pair label
SPECIAL_ROLES = ("pad", "unk", "cls", "sep", "mask")  # tokenizer.special_ids: every role, each its own id


def has_pairs(mode: str) -> bool:
    """True when rows of packing `mode` are sentence pairs (columns `segment_b_start`, `pair_label`)."""
    return mode in PAIR_MODES


def _show(value) -> str:
    """A short JSON rendering of a bad value for the error line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """Raises DataError naming the manifest file and the dotted key of the first bad value."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> None:
        raise DataError(
            f"{self.path}: {key} {problem}; the manifest is damaged or not ours: rebuild the shards "
            "with `mlm-data build`"
        )

    def mapping(self, value, key: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, got {_show(value)}")
        return value

    def listing(self, value, key: str) -> list:
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {_show(value)}")
        return value

    def integer(self, value, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):  # bool is an int to Python, not to us
            self.fail(key, f"must be an integer, got {_show(value)}")
        if value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def string(self, value, key: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {_show(value)}")
        return value

    def choice(self, value, key: str, choices) -> str:
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {_show(value)}")
        return value

    def inside(self, value, key: str, shards_dir: str) -> None:
        """The name must resolve, symlinks followed, to a path strictly inside `shards_dir`."""
        name = self.string(value, key)
        if "\x00" in name:
            self.fail(key, "contains a NUL byte")
        root = os.path.realpath(shards_dir)
        target = os.path.realpath(os.path.join(shards_dir, name))  # an absolute name replaces the dir
        if target == root or os.path.commonpath([root, target]) != root:
            self.fail(
                key,
                f"{_show(name)} resolves to {target}, outside {shards_dir}: a manifest may only name "
                "files inside its own directory",
            )


def check_manifest_data(data, path: str, shards_dir: str) -> None:
    """Check the parsed JSON of `path` (the manifest of `shards_dir`); return None when it is sound.

    Raises DataError naming the first bad key: an unknown or missing key, a wrong type or range, a
    split whose rows/tokens differ from its shards' sums, a shard listed twice, or a file name (shard
    or tokenizer dir) that resolves outside `shards_dir`.
    """
    c = _Checker(path)
    c.mapping(data, "the top level")
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        c.fail(f"key {unknown[0]}", "is not a manifest key")
    for key in REQUIRED_KEYS:
        if key not in data:
            c.fail(f"key {key}", "is missing")
    c.integer(data["seq_len"], "seq_len", minimum=1)
    c.choice(data["mode"], "mode", MODES)
    c.choice(data["id_dtype"], "id_dtype", tuple(ID_DTYPES))
    _check_tokenizer(c, data["tokenizer"], data["id_dtype"], shards_dir)
    splits = c.mapping(data["splits"], "splits")
    for name in sorted(set(splits) | set(SPLITS)):
        if name not in SPLITS:
            c.fail(f"splits.{name}", f"is not a split (expected {', '.join(SPLITS)})")
        if name not in splits:
            c.fail(f"splits.{name}", "is missing")
    seen: dict[str, str] = {}
    for name in SPLITS:
        _check_split(c, splits[name], f"splits.{name}", shards_dir, seen)
    for i, source in enumerate(c.listing(data.get("sources", []), "sources")):
        c.mapping(source, f"sources[{i}]")
    for key, n in c.mapping(data.get("counts", {}), "counts").items():
        c.integer(n, f"counts.{key}")
    _check_build(c, c.mapping(data.get("build", {}), "build"))


def _check_tokenizer(c: _Checker, tokenizer, id_dtype: str, shards_dir: str) -> None:
    c.mapping(tokenizer, "tokenizer")
    vocab_size = c.integer(tokenizer.get("vocab_size"), "tokenizer.vocab_size", minimum=1)
    if vocab_size > ID_DTYPES[id_dtype]:
        c.fail("tokenizer.vocab_size", f"{vocab_size} does not fit id_dtype {id_dtype}")
    c.string(tokenizer.get("hash"), "tokenizer.hash")
    if "dir" in tokenizer:
        c.inside(tokenizer["dir"], "tokenizer.dir", shards_dir)
    special_ids = c.mapping(tokenizer.get("special_ids"), "tokenizer.special_ids")
    holder: dict[int, str] = {}
    for role in sorted(set(special_ids) | set(SPECIAL_ROLES), key=_role_order):
        key = f"tokenizer.special_ids.{role}"
        if role not in SPECIAL_ROLES:
            c.fail(key, f"is not a special token role (expected {', '.join(SPECIAL_ROLES)})")
        if role not in special_ids:
            c.fail(key, "is missing")
        token_id = c.integer(special_ids[role], key)
        if token_id >= vocab_size:  # an IndexError in the embedding at the first step
            c.fail(key, f"{token_id} is not below tokenizer.vocab_size {vocab_size}")
        if token_id in holder:  # one id for two roles: masking would take one for the other
            c.fail(key, f"{token_id} is also tokenizer.special_ids.{holder[token_id]}")
        holder[token_id] = role


def _role_order(role: str) -> tuple[int, str]:
    return (SPECIAL_ROLES.index(role) if role in SPECIAL_ROLES else len(SPECIAL_ROLES), role)


def _check_split(c: _Checker, split, key: str, shards_dir: str, seen: dict[str, str]) -> None:
    c.mapping(split, key)
    rows = c.integer(split.get("rows"), f"{key}.rows")
    tokens = c.integer(split.get("tokens"), f"{key}.tokens")
    shard_rows = shard_tokens = 0
    for i, shard in enumerate(c.listing(split.get("shards"), f"{key}.shards")):
        where = f"{key}.shards[{i}]"
        c.mapping(shard, where)
        c.inside(shard.get("file"), f"{where}.file", shards_dir)
        real = os.path.realpath(os.path.join(shards_dir, shard["file"]))
        if real in seen:  # the same rows twice would silently double part of the data
            c.fail(f"{where}.file", f"{_show(shard['file'])} is the same file as {seen[real]}")
        seen[real] = f"{where}.file"
        shard_rows += c.integer(shard.get("rows"), f"{where}.rows")
        shard_tokens += c.integer(shard.get("tokens"), f"{where}.tokens")
        c.integer(shard.get("bytes"), f"{where}.bytes")
        c.string(shard.get("sha256"), f"{where}.sha256")
    if (rows, tokens) != (shard_rows, shard_tokens):
        c.fail(
            f"{key}.rows/tokens",
            f"say {rows}/{tokens} but its shards sum to {shard_rows}/{shard_tokens}",
        )


def _check_build(c: _Checker, build: dict) -> None:
    partition = build.get("partition")
    if partition is not None:
        c.mapping(partition, "build.partition")
        count = c.integer(partition.get("count"), "build.partition.count", minimum=1)
        index = c.integer(partition.get("index"), "build.partition.index")
        if index >= count:
            c.fail("build.partition.index", f"{index} is not below build.partition.count {count}")
    if "identity" in build and build["identity"] is not None:
        identity = c.mapping(build["identity"], "build.identity")
        c.mapping(identity.get("settings"), "build.identity.settings")
        files = c.listing(identity.get("files", []), "build.identity.files")
        for i, entry in enumerate(files):
            if not isinstance(entry, list) or len(entry) != 2:
                c.fail(f"build.identity.files[{i}]", f"must be [path, bytes], got {_show(entry)}")
    if "merged_partitions" in build:
        c.integer(build["merged_partitions"], "build.merged_partitions", minimum=1)
