"""Token-classification data for `mlm-finetune --task token-classification`: sentences as words and one tag
per word, from JSONL or Parquet (a list-of-words and a list-of-tags column, the `datasets` / CoNLL
convention) or CoNLL column files (`word ... tag` per line, a blank line between sentences, `-DOCSTART-`
lines skipped). Tags follow the BIO (IOB2) or BIOES scheme: `O`, or a prefix and an entity type
(`B-PER`). Every problem raises FinetuneInputError with one line naming the file and its line (or row).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from pretrain.finetune.data import FinetuneInputError, read_table

SCHEMES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
_SCHEME_ALIASES = {"BIO": "BIO", "IOB2": "BIO", "BIOES": "BIOES", "IOBES": "BIOES"}
CONLL_EXTENSIONS = (".conll", ".bio", ".iob", ".iob2", ".bioes", ".txt")
_TABLE_EXTENSIONS = (".parquet", ".pq")
_JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")
_COLUMN_FLAGS = "name them with --tokens-column / --tags-column"


@dataclass
class TokenSplit:
    """One split: sentences (lists of words), their tags (one per word), and where each sentence was read
    (`file:line` or `file: row N`), so later checks can name it."""

    sentences: list[list[str]]
    tags: list[list[str]]
    where: list[str] = field(default_factory=list)
    empty_skipped: int = 0
    """Sentences with no words (left out)."""

    def __len__(self) -> int:
        return len(self.sentences)


@dataclass
class TokenTaskData:
    """A token-classification task: splits, the scheme, and the tag names (id i = label_names[i])."""

    train: TokenSplit
    validation: TokenSplit
    scheme: str
    label_names: list[str]
    validation_source: str
    orphan_inside_tags: dict[str, int]
    """Per split: I- (and, BIOES, E-) tags that continue no entity; scored as the scheme says."""

    def all_o_word_accuracy(self) -> float:
        """Validation word accuracy of tagging every word O (the majority tag of any NER set)."""
        tags = [t for sentence in self.validation.tags for t in sentence]
        return tags.count("O") / len(tags) if tags else 0.0


def canonical_scheme(name: str) -> str:
    """BIO or BIOES for `name` (case-insensitive; IOB2 and IOBES are the same schemes). Raises
    FinetuneInputError for any other."""
    scheme = _SCHEME_ALIASES.get(name.upper())
    if scheme is None:
        raise FinetuneInputError(
            f"--tag-scheme {name!r}: unknown tagging scheme; use BIO (IOB2) or BIOES (IOBES)"
        )
    return scheme


def read_token_file(path: str, tokens_column: str, tags_column: str) -> TokenSplit:
    """The sentences of `path`: JSONL / Parquet by the two columns, else (CONLL_EXTENSIONS) CoNLL columns.

    Raises FinetuneInputError: missing or empty file, unknown extension, unparsable line or row, missing
    column, a cell that is not a list of strings, words and tags of different lengths (naming the line).
    """
    if not os.path.isfile(path):
        raise FinetuneInputError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext in _JSONL_EXTENSIONS:
        split = _read_jsonl(path, tokens_column, tags_column)
    elif ext in _TABLE_EXTENSIONS:
        split = _read_parquet(path, tokens_column, tags_column)
    elif ext in CONLL_EXTENSIONS:
        split = _read_conll(path)
    else:
        known = ", ".join(_JSONL_EXTENSIONS + _TABLE_EXTENSIONS + CONLL_EXTENSIONS)
        raise FinetuneInputError(
            f"{path}: unknown extension {ext or '(none)'!r} for token classification; use one of {known}"
        )
    if not split.sentences:
        raise FinetuneInputError(f"{path}: no sentences")
    return split


def _sentence(words, tags, where: str, tokens_column: str, tags_column: str, split: TokenSplit) -> None:
    for name, value in ((tokens_column, words), (tags_column, tags)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            shown = type(value).__name__ if not isinstance(value, list) else "a list of non-strings"
            raise FinetuneInputError(
                f"{where}: {name!r} is {shown}, not a list of strings (tags are names such as B-PER; "
                "write integer tag ids as their names)"
            )
    if len(words) != len(tags):
        raise FinetuneInputError(
            f"{where}: {len(words)} words but {len(tags)} tags in {tokens_column!r} / {tags_column!r}; "
            "give every word exactly one tag"
        )
    if not words:
        split.empty_skipped += 1
        return
    split.sentences.append(words)
    split.tags.append(tags)
    split.where.append(where)


def _read_jsonl(path: str, tokens_column: str, tags_column: str) -> TokenSplit:
    split = TokenSplit([], [])
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FinetuneInputError(f"{where}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise FinetuneInputError(f"{where}: not a JSON object")
                missing = [c for c in (tokens_column, tags_column) if c not in record]
                if missing:
                    raise FinetuneInputError(
                        f"{where}: no key {missing[0]!r} (keys: {', '.join(record) or 'none'}); "
                        + _COLUMN_FLAGS
                    )
                _sentence(
                    record[tokens_column], record[tags_column], where, tokens_column, tags_column, split
                )
    except UnicodeDecodeError as exc:
        raise FinetuneInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return split


def _read_parquet(path: str, tokens_column: str, tags_column: str) -> TokenSplit:
    table = read_table(path, [tokens_column, tags_column], flags=_COLUMN_FLAGS)
    split = TokenSplit([], [])
    words, tags = table.column(tokens_column).to_pylist(), table.column(tags_column).to_pylist()
    for row, (w, t) in enumerate(zip(words, tags, strict=True), 1):
        _sentence(w, t, f"{path}: row {row}", tokens_column, tags_column, split)
    return split


def _read_conll(path: str) -> TokenSplit:
    """CoNLL columns: the first field is the word, the last the tag (CoNLL-2003's POS and chunk columns in
    between are ignored); a blank line ends a sentence; -DOCSTART- lines are document marks, not words."""
    split = TokenSplit([], [])
    words: list[str] = []
    tags: list[str] = []
    start = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                fields = line.split()
                if fields and fields[0] == "-DOCSTART-":
                    fields = []
                if not fields:
                    if words:
                        _sentence(words, tags, f"{path}: line {start}", "words", "tags", split)
                    words, tags = [], []
                    continue
                if len(fields) < 2:
                    raise FinetuneInputError(
                        f"{path}: line {number}: one column ({fields[0]!r}); a CoNLL line is 'word ... tag'"
                    )
                if not words:
                    start = number
                words.append(fields[0])
                tags.append(fields[-1])
    except UnicodeDecodeError as exc:
        raise FinetuneInputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if words:
        _sentence(words, tags, f"{path}: line {start}", "words", "tags", split)
    return split


def _entity_type(tag: str, scheme: str, where: str) -> str | None:
    """The entity type of `tag` (None for O). Raises FinetuneInputError for a tag outside the scheme."""
    if tag == "O":
        return None
    prefix, dash, kind = tag.partition("-")
    if not dash or not kind or prefix not in SCHEMES[scheme]:
        allowed = ", ".join(f"{p}-TYPE" for p in SCHEMES[scheme])
        raise FinetuneInputError(
            f"{where}: tag {tag!r} is not a {scheme} tag (O, {allowed}); fix the tag or pass the file's "
            "scheme with --tag-scheme"
        )
    return kind


def _orphans(split: TokenSplit) -> int:
    """Tags that continue an entity where none is open: I- (or E-) after O, after another type, after an
    entity's end (BIOES E-/S-) or at the start of a sentence."""
    count = 0
    for tags in split.tags:
        open_type = None
        for tag in tags:
            prefix, _, kind = tag.partition("-")
            if prefix in ("I", "E") and kind != open_type:
                count += 1
            # An orphan I- opens an entity that later I-s continue (conlleval): one orphan per run.
            open_type = kind if prefix in ("B", "I") else None
    return count


def _types(split: TokenSplit, scheme: str) -> set[str]:
    found = set()
    for tags, where in zip(split.tags, split.where, strict=True):
        for tag in tags:
            kind = _entity_type(tag, scheme, where)
            if kind is not None:
                found.add(kind)
    return found


def load_token_task(
    train_path: str,
    validation_path: str | None,
    *,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    scheme: str = "BIO",
    validation_fraction: float = 0.1,
    split_seed: int = 0,
) -> TokenTaskData:
    """Read the training (and validation) file into a TokenTaskData.

    Without `validation_path`, a seeded `validation_fraction` of the training sentences is held out. The
    tag names are O and every prefix of the scheme for each entity type of the training file. Raises
    FinetuneInputError for bad files, an unknown scheme, a tag outside the scheme, a training file with
    one tag only, validation entity types the training file lacks, or an empty validation split.
    """
    scheme = canonical_scheme(scheme)
    if not 0.0 < validation_fraction < 1.0:
        raise FinetuneInputError(f"--validation-fraction must be in (0, 1), got {validation_fraction}")
    train = read_token_file(train_path, tokens_column, tags_column)
    types = _types(train, scheme)
    distinct = {t for tags in train.tags for t in tags}
    if len(distinct) < 2 or not types:
        raise FinetuneInputError(
            f"{train_path}: every word is tagged {sorted(distinct)[0]!r}: one tag only, nothing to learn "
            "(token classification needs O and at least one entity tag)"
        )
    if validation_path is None:
        rng = np.random.default_rng(split_seed)
        take = max(1, round(len(train) * validation_fraction))
        if take >= len(train):
            raise FinetuneInputError(
                f"{train_path}: {len(train)} sentence(s): too few to split off a validation set; "
                "pass --validation"
            )
        held = set(rng.permutation(len(train))[:take].tolist())
        parts = [TokenSplit([], []), TokenSplit([], [])]
        for i in range(len(train)):
            part = parts[1] if i in held else parts[0]
            part.sentences.append(train.sentences[i])
            part.tags.append(train.tags[i])
            part.where.append(train.where[i])
        parts[0].empty_skipped = train.empty_skipped
        train, validation = parts
        source = f"{validation_fraction:g} of {train_path} (sentences, split seed {split_seed})"
    else:
        validation = read_token_file(validation_path, tokens_column, tags_column)
        unseen = sorted(_types(validation, scheme) - types)
        if unseen:
            raise FinetuneInputError(
                f"{validation_path}: entity type(s) {', '.join(unseen)} not in the training tags of "
                f"{train_path} ({', '.join(sorted(types))}); the tagger cannot predict them"
            )
        source = validation_path
    names = ["O"] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in SCHEMES[scheme]]
    orphans = {"train": _orphans(train), "validation": _orphans(validation)}
    return TokenTaskData(train, validation, scheme, names, source, orphans)
