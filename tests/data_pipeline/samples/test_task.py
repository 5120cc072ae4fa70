"""sample_task: a real labelled task from stdlib docstrings, split by text, kept out of the sample corpus."""

import json

import pytest

from data_pipeline.cli import main as data_main
from data_pipeline.samples.corpus import write_sample_corpus
from data_pipeline.samples.task import FAMILIES, is_validation_text


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("task")
    assert data_main(["sample-task", str(out)]) == 0
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_task_files_match_their_summary(task_dir):
    stats = json.loads((task_dir / "task.json").read_text())
    train, validation = _rows(task_dir / "train.jsonl"), _rows(task_dir / "validation.jsonl")
    assert len(train) == stats["train"]["examples"] > 1000
    assert len(validation) == stats["validation"]["examples"] > 200
    for split, rows in (("train", train), ("validation", validation)):
        counts = {}
        for row in rows:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
        assert counts == stats[split]["classes"]
        assert set(counts) == set(FAMILIES)  # every class in both splits
    majority = stats["train"]["majority_class"]
    expected = sum(r["label"] == majority for r in validation) / len(validation)
    assert stats["validation"]["majority_accuracy"] == pytest.approx(expected)
    assert expected < 0.3  # seven fairly balanced classes: chance is far below a trained classifier


def test_split_is_a_function_of_the_text_and_labels_follow_the_package(task_dir):
    train, validation = _rows(task_dir / "train.jsonl"), _rows(task_dir / "validation.jsonl")
    assert all(not is_validation_text(r["text"]) for r in train)
    assert all(is_validation_text(r["text"]) for r in validation)
    assert not {r["text"] for r in train} & {r["text"] for r in validation}
    package_label = {p: label for label, packages in FAMILIES.items() for p in packages}
    for row in train + validation:
        assert package_label[row["source"].split("/")[0]] == row["label"]
        assert "/test" not in row["source"] and len(row["text"].split()) >= 4


def test_cli_refuses_an_existing_task(task_dir, capsys):
    assert data_main(["sample-task", str(task_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a sample task" in err[0] and str(task_dir) in err[0]


def test_sample_corpus_leaves_out_the_evaluation_texts(task_dir, tmp_path):
    # 1.5 MB reaches past the top-level modules into the packages, asyncio (the first family) included.
    stats = write_sample_corpus(str(tmp_path / "corpus"), max_bytes=1_500_000)
    corpus = "".join((tmp_path / "corpus" / name).read_text(encoding="utf-8") for name in stats["files"])
    asyncio_rows = {
        split: [r["text"] for r in _rows(task_dir / f"{split}.jsonl") if r["label"] == "asyncio"]
        for split in ("train", "validation")
    }
    found = {split: sum(text in corpus for text in rows) / len(rows) for split, rows in asyncio_rows.items()}
    assert found["train"] > 0.95  # the corpus does cover asyncio's docstrings...
    # ...but not its evaluation texts (a few occur inside longer docstrings that are not evaluation texts)
    assert found["validation"] < 0.05
    assert stats["held_out_docstrings"] >= len(asyncio_rows["validation"])
