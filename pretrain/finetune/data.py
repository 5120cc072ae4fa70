"""Labelled data for `mlm-finetune`: CSV / TSV / JSONL / Parquet tables -> texts, text pairs and label ids.

Read with pyarrow only (`datasets` is not needed). Text columns are read as strings; labels may be
strings, integers or integral floats (a label is its string form, so `1` in one file equals `"1"` in
another). CSV and TSV cells have no types: the label column is read as text, and is integers only when
every label is an integer (or an integral number), so `true`, `1` and `0` stay three classes. Without
a validation file the training file is split deterministically (stratified by label, seeded). Every
problem raises FinetuneInputError with one line naming the file and what to do.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# Extension -> reader kind. TSV is read without quoting (as GLUE's files are written).
_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class FinetuneInputError(ValueError):
    """Bad fine-tuning input (data file, column, labels or model dir); the message is one line."""


@dataclass
class Split:
    """One split: texts, optional second texts (sentence pairs) and label ids."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """A classification task: train and validation splits and the label names (id i = label_names[i])."""

    train: Split
    validation: Split
    label_names: list[str]
    validation_source: str
    """The validation file, or how it was split off the training file."""

    def majority_accuracy(self) -> float:
        """Validation accuracy of always predicting the most frequent training label."""
        majority = int(np.bincount(self.train.labels, minlength=len(self.label_names)).argmax())
        return float(np.mean(self.validation.labels == majority))


def read_table(
    path: str,
    columns: list[str],
    flags: str = "name the right one with --text-column / --text-pair-column / --label-column",
) -> pa.Table:
    """Read `path` (format from its extension) and return the `columns` of it; `flags` ends the message
    of a missing column (the command-line flags that name the columns).

    Raises FinetuneInputError: missing or empty file, unknown extension, unparsable content, a missing
    column (naming the columns present) or no rows.
    """
    if not os.path.isfile(path):
        raise FinetuneInputError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    kind = _FORMATS.get(ext)
    if kind is None:
        raise FinetuneInputError(
            f"{path}: unknown extension {ext or '(none)'!r}; use one of {', '.join(sorted(_FORMATS))}"
        )
    if os.path.getsize(path) == 0:
        raise FinetuneInputError(f"{path}: empty file")
    try:
        table = _read(path, kind, columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinetuneInputError(f"{path}: cannot read as {kind.upper()}: {message}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise FinetuneInputError(
            f"{path}: no column {missing[0]!r} (columns: {', '.join(table.column_names) or 'none'}); {flags}"
        )
    if table.num_rows == 0:
        raise FinetuneInputError(f"{path}: no rows")
    return table.select(columns)


def _read(path: str, kind: str, columns: list[str]) -> pa.Table:
    if kind in ("csv", "tsv"):
        import pyarrow.csv as pcsv

        # Text must stay text even when a column happens to hold only numbers; the labels are read as
        # text too (pyarrow's inference reads `true`, `1` and `0` as booleans: three classes became two)
        # and typed by _text_labels from the whole column.
        convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in columns})
        parse = pcsv.ParseOptions(delimiter="\t", quote_char=False) if kind == "tsv" else pcsv.ParseOptions()
        return pcsv.read_csv(path, parse_options=parse, convert_options=convert)
    if kind == "jsonl":
        import pyarrow.json as pjson

        return pjson.read_json(path)
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _strings(table: pa.Table, column: str, path: str) -> list[str]:
    values = table.column(column)
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise FinetuneInputError(
            f"{path}: row {row}: column {column!r} is empty (null); fill or drop that row"
        )
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise FinetuneInputError(f"{path}: column {column!r} holds {values.type}, not text")
    return values.to_pylist()


def _labels(table: pa.Table, column: str, path: str) -> list[str]:
    """Label strings: ints as str(int), integral floats as their int, strings unchanged (CSV / TSV text
    typed by the whole column first: _text_labels)."""
    values = table.column(column)
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise FinetuneInputError(f"{path}: row {row}: label column {column!r} is empty (null)")
    items = values.to_pylist()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        empty = next((row for row, v in enumerate(items, 1) if not v.strip()), None)
        if empty is not None:
            raise FinetuneInputError(f"{path}: row {empty}: label column {column!r} is empty")
        if _FORMATS.get(os.path.splitext(path)[1].lower()) in ("csv", "tsv"):
            return _text_labels(items, column, path)
    if pa.types.is_floating(values.type):
        return _float_labels(items, column, path)
    if (
        pa.types.is_integer(values.type)
        or pa.types.is_string(values.type)
        or pa.types.is_boolean(values.type)
    ):
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in items]
    raise FinetuneInputError(f"{path}: label column {column!r} holds {values.type}; use strings or integers")


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _text_labels(items: list[str], column: str, path: str) -> list[str]:
    """Labels read from CSV / TSV text: integers when the whole column is integers (`01` is `1`, as
    a Parquet or JSONL integer would be), the integral numbers of an all-number column likewise, else
    the strings as written (`true`, `1` and `0` are three classes)."""
    stripped = [v.strip() for v in items]
    if all(_INTEGER.fullmatch(v) for v in stripped):
        return [str(int(v)) for v in stripped]
    try:
        numbers = [float(v) for v in stripped]
    except ValueError:
        return items
    return _float_labels(numbers, column, path)


def _float_labels(items: list[float], column: str, path: str) -> list[str]:
    for row, v in enumerate(items, 1):
        if not math.isfinite(v) or v != int(v):
            raise FinetuneInputError(
                f"{path}: row {row}: label {v!r} in {column!r} is not a class (mlm-finetune does "
                "classification, not regression)"
            )
    return [str(int(v)) for v in items]


def _label_order(labels: list[str]) -> list[str]:
    """Label names in a stable order: numerically when every label is an integer, else alphabetically."""
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def _read_split(path: str, text: str, pair: str | None, label: str) -> tuple[list, list | None, list[str]]:
    columns = [text] + ([pair] if pair else []) + [label]
    table = read_table(path, columns)
    texts = _strings(table, text, path)
    pairs = _strings(table, pair, path) if pair else None
    return texts, pairs, _labels(table, label, path)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both ascending: `fraction` of each class (rounded, at least
    one when the class has two or more rows) goes to validation, chosen by a numpy generator from `seed`."""
    rng = np.random.default_rng(seed)
    validation = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = round(len(rows) * fraction)
        take = min(max(take, 1 if len(rows) >= 2 else 0), len(rows) - 1)
        validation.extend(rng.permutation(rows)[:take].tolist())
    val = np.array(sorted(validation), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def load_task(
    train_path: str,
    validation_path: str | None,
    *,
    text_column: str,
    label_column: str,
    text_pair_column: str | None = None,
    validation_fraction: float = 0.1,
    split_seed: int = 0,
) -> TaskData:
    """Read the training (and validation) file into a TaskData.

    Without `validation_path`, a stratified `validation_fraction` of the training rows is held out
    (seeded by split_seed). Raises FinetuneInputError for bad files or columns, fewer than two classes,
    validation labels the training file lacks, or an empty validation split.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise FinetuneInputError(f"--validation-fraction must be in (0, 1), got {validation_fraction}")
    texts, pairs, labels = _read_split(train_path, text_column, text_pair_column, label_column)
    names = _label_order(labels)
    if len(names) < 2:
        raise FinetuneInputError(
            f"{train_path}: label column {label_column!r} has one class only ({names[0]!r}); "
            "classification needs at least two"
        )
    index = {name: i for i, name in enumerate(names)}
    ids = np.array([index[name] for name in labels], dtype=np.int64)
    if validation_path is None:
        tr, va = stratified_split(ids, validation_fraction, split_seed)
        if len(va) == 0:  # no class has two rows: every row is a class of its own
            raise FinetuneInputError(
                f"{train_path}: label column {label_column!r} holds {len(names)} classes in {len(ids)} rows, "
                "one row each, so none can be split off into a validation set: it looks like free text "
                "or ids, not labels; name the label column with --label-column (or pass --validation)"
            )
        train = Split([texts[i] for i in tr], _pick(pairs, tr), ids[tr])
        validation = Split([texts[i] for i in va], _pick(pairs, va), ids[va])
        source = f"{validation_fraction:g} of {train_path} (stratified, split seed {split_seed})"
    else:
        v_texts, v_pairs, v_labels = _read_split(validation_path, text_column, text_pair_column, label_column)
        unseen = sorted(set(v_labels) - set(names))
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
            raise FinetuneInputError(
                f"{validation_path}: label(s) {shown} not in the training labels of {train_path} "
                f"({', '.join(repr(n) for n in names[:10])}); the classifier cannot predict them"
            )
        train = Split(texts, pairs, ids)
        validation = Split(v_texts, v_pairs, np.array([index[v] for v in v_labels], dtype=np.int64))
        source = validation_path
    return TaskData(train, validation, names, source)


def _pick(items: list[str] | None, rows: np.ndarray) -> list[str] | None:
    return None if items is None else [items[i] for i in rows]
