"""Token-classification data: JSONL, Parquet and CoNLL read the same sentences; schemes; orphan I- tags
counted; bad input: one line naming the file and line, exit 1."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.finetune.cli import main as finetune_main
from pretrain.finetune.data import FinetuneInputError
from pretrain.finetune.token_data import load_token_task, read_token_file

SENTENCES = [
    (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
    (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    (["中", "国", "人"], ["B-LOC", "I-LOC", "O"]),
]


def _jsonl(path, sentences=SENTENCES, tokens="tokens", tags="tags"):
    path.write_text("".join(json.dumps({tokens: w, tags: t}) + "\n" for w, t in sentences), encoding="utf-8")
    return path


def _conll(path, sentences=SENTENCES):
    # CoNLL-2003 layout: word POS chunk tag, a -DOCSTART- line, blank lines between sentences.
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences:
        lines += [f"{w} NN I-NP {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_jsonl_parquet_and_conll_read_the_same_sentences(tmp_path):
    records = [{"words": w, "ner": t} for w, t in SENTENCES]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    splits = [
        read_token_file(str(_jsonl(tmp_path / "t.jsonl", tokens="words", tags="ner")), "words", "ner"),
        read_token_file(str(tmp_path / "t.parquet"), "words", "ner"),
        read_token_file(str(_conll(tmp_path / "t.conll")), "words", "ner"),
    ]
    for split in splits:
        assert list(zip(split.sentences, split.tags, strict=True)) == [(w, t) for w, t in SENTENCES]
    assert splits[0].where[1].endswith("t.jsonl: line 2")
    assert splits[1].where[1].endswith("t.parquet: row 2")
    assert splits[2].where[1].endswith("t.conll: line 8")  # the line of its first word


def test_tag_names_schemes_and_orphans(tmp_path):
    bio = load_token_task(str(_jsonl(tmp_path / "a.jsonl")), str(_jsonl(tmp_path / "b.jsonl")))
    assert bio.label_names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert bio.orphan_inside_tags == {"train": 0, "validation": 0}
    orphans = [(["a", "b", "c", "d"], ["I-PER", "I-PER", "O", "I-LOC"]), (["x", "y"], ["B-PER", "I-LOC"])]
    task = load_token_task(str(_jsonl(tmp_path / "o.jsonl", SENTENCES + orphans)), str(tmp_path / "b.jsonl"))
    assert task.orphan_inside_tags["train"] == 3  # a run of I-PER is one orphan; I-LOC after O; after B-PER
    bioes = [(["New", "York", "is", "big"], ["B-LOC", "E-LOC", "O", "S-MISC"])]
    path = str(_jsonl(tmp_path / "e.jsonl", bioes))
    task = load_token_task(path, path, scheme="iobes")
    assert task.scheme == "BIOES" and task.label_names[:5] == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    assert task.all_o_word_accuracy() == 0.25
    split = load_token_task(str(_jsonl(tmp_path / "s.jsonl", SENTENCES * 10)), None, validation_fraction=0.2)
    assert (len(split.train), len(split.validation)) == (24, 6)


def _one_line_error(argv, capsys) -> str:
    assert finetune_main(["unused-model", "--task", "token-classification", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlm-finetune: error: ")
    return err[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("lengths", "line 2: 2 words but 1 tags"),
        ("scheme", "--tag-scheme 'IOB9': unknown tagging scheme"),
        ("one tag", "every word is tagged 'O': one tag only"),
        ("tag outside the scheme", "line 1: tag 'E-LOC' is not a BIO tag"),
        ("conll column", "line 3: one column ('Blackburn')"),
        ("integer tags", "line 1: 'tags' is a list of non-strings"),
        ("unseen type", "entity type(s) DATE not in the training tags"),
        ("missing key", "line 1: no key 'tokens' (keys: words, ner)"),
        ("jobs", "--jobs > 1 is not supported with --task token-classification"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, capsys, case, expected):
    train, argv = tmp_path / "train.jsonl", []
    if case == "lengths":
        _jsonl(train, [SENTENCES[0], (["Peter", "Blackburn"], ["B-PER"])])
    elif case == "scheme":
        _jsonl(train)
        argv = ["--tag-scheme", "IOB9"]
    elif case == "one tag":
        _jsonl(train, [(["a", "b"], ["O", "O"])])
    elif case == "tag outside the scheme":
        _jsonl(train, [(["New", "York"], ["B-LOC", "E-LOC"])])
    elif case == "conll column":
        train = tmp_path / "train.conll"
        train.write_text("Peter B-PER\n\nBlackburn\n", encoding="utf-8")
    elif case == "integer tags":
        train.write_text(json.dumps({"tokens": ["a"], "tags": [3]}) + "\n", encoding="utf-8")
    elif case == "jobs":
        _jsonl(train)
        argv = ["--jobs", "2"]
    elif case == "unseen type":
        _jsonl(train)
        argv = ["--validation", str(_jsonl(tmp_path / "v.jsonl", [(["May"], ["B-DATE"])]))]
    else:
        _jsonl(train, tokens="words", tags="ner")
    line = _one_line_error(["--train", str(train), "--out", str(tmp_path / "out"), *argv], capsys)
    assert expected in line and (case in ("scheme", "jobs") or str(train) in line or "v.jsonl" in line)
    assert not (tmp_path / "out").exists()


def test_unknown_extension_and_missing_file_are_refused(tmp_path):
    (tmp_path / "t.csv").write_text("tokens,tags\n")
    with pytest.raises(FinetuneInputError, match="unknown extension '.csv' for token classification"):
        read_token_file(str(tmp_path / "t.csv"), "tokens", "tags")
    with pytest.raises(FinetuneInputError, match="no such file"):
        read_token_file(str(tmp_path / "none.jsonl"), "tokens", "tags")
