"""The offline token task: stdlib docstring paragraphs tagged by the stated rules, split as the sequence
task is, validation paragraphs held out of the sample corpus."""

import ast
import json
import sysconfig

import pytest

from data_pipeline.cli import main as data_main
from data_pipeline.samples.task import evaluation_texts
from data_pipeline.samples.token_task import (
    WORD,
    exception_names,
    parameters_of,
    stdlib_modules,
    tag_words,
)

STDLIB = sysconfig.get_paths()["stdlib"]


@pytest.fixture(scope="module")
def token_task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("token-task")
    assert data_main(["sample-task", str(out), "--task", "token-classification"]) == 0
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tagged(source: str, text: str) -> list[tuple[str, str]]:
    node = ast.parse(source).body[0]
    words, tags = tag_words(text, parameters_of(node), stdlib_modules(STDLIB), exception_names())
    return [(w, t) for w, t in zip(words, tags, strict=True) if t != "O"]


def test_each_rule_tags_what_it_states():
    source = "def f(self, path, a, socket, timeout=None): pass"
    text = (
        "Read path with os.path.join and raise ValueError if a timeout passes; "
        "see the email package, this module, the socket module and xml.etree.ElementTree.parse."
    )
    assert _tagged(source, text) == [
        ("path", "B-ARG"),
        ("os", "B-MOD"),  # the longest module prefix of os.path.join: "os . path"
        (".", "I-MOD"),
        ("path", "I-MOD"),
        ("ValueError", "B-EXC"),
        ("timeout", "B-ARG"),  # "a" is a one-letter parameter: left out, it is the English article
        ("email", "B-MOD"),  # "this module": `this` is a stdlib module but not counted as one
        ("socket", "B-ARG"),  # a parameter named like a module is a parameter
        ("xml", "B-MOD"),
        (".", "I-MOD"),
        ("etree", "I-MOD"),
        (".", "I-MOD"),
        ("ElementTree", "I-MOD"),
    ]
    # A class's parameters are its __init__'s; spaced dots are no dotted name.
    cls = "class C:\n    def __init__(self, name): pass"
    assert _tagged(cls, "Keep name . os . path and unknown.thing here") == [("name", "B-ARG")]


def test_task_files_match_their_summary_and_are_valid_bio(token_task_dir):
    stats = json.loads((token_task_dir / "task.json").read_text())
    assert stats["scheme"] == "BIO" and "ARG" in stats["labelling"]
    for split in ("train", "validation"):
        rows = _rows(token_task_dir / f"{split}.jsonl")
        assert len(rows) == stats[split]["sentences"] > (2000 if split == "train" else 400)
        tags = [t for r in rows for t in r["tags"]]
        assert len(tags) == stats[split]["words"]
        for kind, count in stats[split]["entities"].items():
            assert count == tags.count(f"B-{kind}") > 10
        assert stats[split]["all_o_word_accuracy"] == pytest.approx(tags.count("O") / len(tags))
        for r in rows:
            assert len(r["tokens"]) == len(r["tags"]) >= 4
            previous = "O"
            for tag in r["tags"]:
                assert not (tag.startswith("I-") and previous == "O")  # every I- continues an entity
                previous = tag


def test_validation_paragraphs_come_from_held_out_docstrings_only(token_task_dir):
    held_out = " ".join(" ".join(WORD.findall(text)) for text in evaluation_texts())
    train = {tuple(r["tokens"]) for r in _rows(token_task_dir / "train.jsonl")}
    for r in _rows(token_task_dir / "validation.jsonl"):
        assert " ".join(r["tokens"]) in held_out  # what the sample corpus leaves out
        assert tuple(r["tokens"]) not in train
