"""mlm-finetune's data: every format reads the same rows; labels; splits; bad input: one line, exit 1."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pretrain.finetune.cli import main as finetune_main
from pretrain.finetune.data import FinetuneInputError, load_task, stratified_split

ROWS = [
    ("the event loop runs callbacks", "an awaitable", "asyncio"),
    ("parse a MIME message, with headers", "an email", "email"),
    ('quoted "text", with a comma', "pairs too", "email"),
    ("12345", "digits only", "asyncio"),
]


def _write(path, rows=ROWS, columns=("text", "text_b", "label")):
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    suffix = path.suffix
    if suffix == ".csv":
        table = pa.Table.from_pylist(records)
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif suffix == ".tsv":
        path.write_text("\t".join(columns) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    path = _write(tmp_path / f"train{suffix}")
    task = load_task(
        str(path), str(path), text_column="text", text_pair_column="text_b", label_column="label"
    )
    assert task.train.texts == [r[0] for r in ROWS]  # "12345" stays text, quotes and commas survive
    assert task.train.pairs == [r[1] for r in ROWS]
    assert task.label_names == ["asyncio", "email"]
    assert task.train.labels.tolist() == [0, 1, 1, 0]


def test_integer_labels_sort_numerically_and_match_string_labels(tmp_path):
    rows = [("a", "x", 10), ("b", "x", 2), ("c", "x", 2), ("d", "x", 10)]
    train = _write(tmp_path / "train.parquet", rows)
    validation = _write(tmp_path / "val.jsonl", [("e", "x", "10"), ("f", "x", "2")])
    task = load_task(str(train), str(validation), text_column="text", label_column="label")
    assert task.label_names == ["2", "10"]
    assert task.validation.labels.tolist() == [1, 0]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_labels_true_1_0_stay_three_classes(tmp_path, suffix):
    # pyarrow's inference read `true`, `1` and `0` as booleans: three classes became two.
    sep = "," if suffix == ".csv" else "\t"
    rows = [("a", "true"), ("b", "1"), ("c", "0"), ("d", "true"), ("e", "1"), ("f", "0")]
    path = tmp_path / f"train{suffix}"
    path.write_text(f"text{sep}label\n" + "".join(f"{t}{sep}{label}\n" for t, label in rows))
    task = load_task(str(path), str(path), text_column="text", label_column="label")
    assert task.label_names == ["0", "1", "true"]
    assert task.train.labels.tolist() == [2, 1, 0, 2, 1, 0]


def test_csv_labels_are_integers_only_when_the_whole_column_is(tmp_path):
    ints = tmp_path / "ints.csv"
    ints.write_text("text,label\na,01\nb,2\nc,10\nd,-1\n")
    assert load_task(str(ints), str(ints), text_column="text", label_column="label").label_names == [
        "-1",
        "1",
        "2",
        "10",
    ]
    floats = tmp_path / "floats.csv"  # integral numbers are their integer, as in Parquet / JSONL
    floats.write_text("text,label\na,1.0\nb,2.0\nc,1\n")
    validation = _write(tmp_path / "val.parquet", [("e", "x", 2), ("f", "x", 1)])
    task = load_task(str(floats), str(validation), text_column="text", label_column="label")
    assert task.label_names == ["1", "2"] and task.validation.labels.tolist() == [1, 0]
    mixed = tmp_path / "mixed.csv"  # not all numbers: strings as written
    mixed.write_text("text,label\na,01\nb,1\nc,yes\n")
    task = load_task(str(mixed), str(mixed), text_column="text", label_column="label")
    assert task.label_names == ["01", "1", "yes"]
    for name, body, expected in [
        ("half.csv", "text,label\na,0.5\nb,1\n", r"half.csv: row 1: label 0.5 in 'label' is not a class"),
        ("empty.csv", "text,label\na,x\nb,\n", r"empty.csv: row 2: label column 'label' is empty"),
    ]:
        (tmp_path / name).write_text(body)
        with pytest.raises(FinetuneInputError, match=expected):
            load_task(str(tmp_path / name), None, text_column="text", label_column="label")


def test_a_label_column_of_free_text_is_named_as_such_not_too_few_rows(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"row {i},sentence number {i}\n" for i in range(5000)))
    with pytest.raises(FinetuneInputError) as err:
        load_task(str(path), None, text_column="text", label_column="label")
    assert str(err.value) == (
        f"{path}: label column 'label' holds 5000 classes in 5000 rows, one row each, so none can be split "
        "off into a validation set: it looks like free text or ids, not labels; name the label column with "
        "--label-column (or pass --validation)"
    )


def test_split_is_stratified_and_deterministic():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 2)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.bincount(labels[val]).tolist()) == [1, 2, 6]  # 20% of each class, at least one
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    again_train, again_val = stratified_split(labels, 0.2, seed=0)
    assert again_val.tolist() == val.tolist() and again_train.tolist() == train.tolist()
    assert stratified_split(labels, 0.2, seed=1)[1].tolist() != val.tolist()


def _error(capsys, argv) -> str:
    assert finetune_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _args(tmp_path, train, *extra):
    return [str(tmp_path / "no-model"), "--train", str(train), *extra, "--out", str(tmp_path / "out")]


def test_bad_data_is_one_line_and_exit_1(tmp_path, capsys):
    good = _write(tmp_path / "good.csv")
    cases = {
        "missing column": (
            _args(tmp_path, good, "--text-column", "body"),
            ["good.csv", "'body'", "text, text_b"],
        ),
        "unknown extension": (_args(tmp_path, tmp_path / "data.xlsx"), ["data.xlsx", "unknown extension"]),
        "missing file": (_args(tmp_path, tmp_path / "gone.csv"), ["gone.csv", "no such file"]),
    }
    (tmp_path / "data.xlsx").write_text("x")
    (tmp_path / "empty.jsonl").write_text("")
    cases["empty file"] = (_args(tmp_path, tmp_path / "empty.jsonl"), ["empty.jsonl", "empty file"])
    (tmp_path / "header.csv").write_text("text,label\n")
    cases["no rows"] = (_args(tmp_path, tmp_path / "header.csv"), ["header.csv", "no rows"])
    one = _write(tmp_path / "one.csv", [(r[0], r[1], "email") for r in ROWS])
    cases["one class"] = (_args(tmp_path, one), ["one.csv", "one class only", "'email'"])
    unseen = _write(tmp_path / "val.csv", [("t", "u", "xml"), ("v", "w", "email")])
    cases["unseen label"] = (
        _args(tmp_path, good, "--validation", str(unseen)),
        ["val.csv", "'xml'", "good.csv"],
    )
    (tmp_path / "null.jsonl").write_text('{"text": "a", "label": 1}\n{"text": null, "label": 2}\n')
    cases["null text"] = (_args(tmp_path, tmp_path / "null.jsonl"), ["null.jsonl", "row 2", "'text'"])
    floats = _write(tmp_path / "floats.parquet", [("a", "b", 0.5), ("c", "d", 1.0)])
    cases["regression"] = (_args(tmp_path, floats), ["floats.parquet", "0.5", "classification"])
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
    cases["unparsable"] = (_args(tmp_path, tmp_path / "bad.jsonl"), ["bad.jsonl", "cannot read as JSONL"])
    for name, (argv, expected) in cases.items():
        line = _error(capsys, argv)
        assert line.startswith("mlm-finetune: error: "), (name, line)
        assert all(part in line for part in expected), (name, line)
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_bad_model_dir_is_one_line_and_exit_1(tmp_path, capsys):
    good = _write(tmp_path / "good.csv")
    if not torch.cuda.is_available():
        line = _error(capsys, _args(tmp_path, good, "--validation", str(good), "--bf16"))
        assert "--bf16 needs a CUDA device" in line
    line = _error(capsys, _args(tmp_path, good, "--validation", str(good)))
    assert "no-model: no such directory" in line and "hub is never contacted" in line
    (tmp_path / "no-model").mkdir()
    line = _error(capsys, _args(tmp_path, good, "--validation", str(good)))
    assert "neither a model dir (config.json), a run dir (config.yaml)" in line
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}')  # no weights, no tokenizer
    argv = [str(tmp_path / "hf"), *_args(tmp_path, good, "--validation", str(good))[1:]]
    assert "hf: no tokenizer files (tokenizer.json, vocab.txt, ...)" in _error(capsys, argv)
    (tmp_path / "hf" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]))
    assert "hf: cannot load as a sequence classifier" in _error(capsys, argv)  # no weights
    (tmp_path / "no-model" / "config.yaml").write_text("run_dir: x\n")  # a run dir without a checkpoint
    line = _error(capsys, _args(tmp_path, good, "--validation", str(good)))
    assert "no-model: cannot export its checkpoint" in line and "no complete, valid checkpoint" in line
    assert not (tmp_path / "out").exists()
