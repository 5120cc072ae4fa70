"""mlm-finetune end to end on CPU: a tiny BERT saved with save_pretrained, fine-tuned on three families of the
real sample task (and on a sentence-pair version of it); the report, the table, seeds and metrics. The task
files and the model come from conftest.py (`task_files`, `tiny_model_dir`)."""

from __future__ import annotations

import json
import logging
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from pretrain.finetune.cli import main as finetune_main
from pretrain.finetune.metrics import classification_metrics
from tests.helpers.finetune import FAMILIES

# Batch 32, not the default 8: a quarter of the steps, and what these tests were sized with.
COMMON = ["--epochs", "3", "--lr", "3e-3", "--max-seq-len", "48", "--batch-size", "32", "--threads", "1"]
COMMON += ["--no-progress"]


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_finetune_end_to_end_with_random_init_baseline(tmp_path, tiny_model_dir, task_files, capsys, caplog):
    train, validation, rows = task_files
    out = tmp_path / "out"
    argv = [
        str(tiny_model_dir),
        "--train",
        str(train),
        "--validation",
        str(validation),
        "--seeds",
        "2",
        "--baseline",
        "random-init",
        *COMMON,
        "--out",
        str(out),
    ]
    with caplog.at_level(logging.INFO, logger="mlm-finetune"):
        assert finetune_main(argv) == 0
    assert (
        "no pooler" in caplog.text
        and "pooler and the classifier head start from random weights" in caplog.text
    )
    table = capsys.readouterr().out
    assert "pretrained" in table and "random-init" in table and "majority class" in table

    report = _report(out)
    task = report["task"]
    assert task["labels"] == sorted(FAMILIES)
    assert (task["train_examples"], task["validation_examples"]) == (
        len(rows["train"]),
        len(rows["validation"]),
    )
    labels = [r["label"] for r in rows["train"]]
    majority = max(set(labels), key=labels.count)
    expected_majority = np.mean([r["label"] == majority for r in rows["validation"]])
    assert task["majority_class_accuracy"] == pytest.approx(expected_majority)
    for which in ("pretrained", "random_init"):
        summary = report[which]
        accuracies = [run["accuracy"] for run in summary["per_seed"]]
        assert [run["seed"] for run in summary["per_seed"]] == [0, 1]
        assert summary["accuracy_mean"] == pytest.approx(statistics.mean(accuracies))
        assert summary["accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
        f1 = [run["f1_macro"] for run in summary["per_seed"]]
        assert summary["f1_macro_mean"] == pytest.approx(statistics.mean(f1))
        assert summary["f1_macro_std"] == pytest.approx(statistics.stdev(f1))
        assert "mcc_mean" not in summary  # three classes
        # It really trains: three epochs on ~700 docstrings beat always answering the majority class.
        assert summary["accuracy_mean"] > task["majority_class_accuracy"] + 0.1, summary

    # The same seeds give the same runs, also when two worker processes train them at once (--jobs 2).
    again = tmp_path / "again"
    argv = [
        str(tiny_model_dir),
        "--train",
        str(train),
        "--validation",
        str(validation),
        "--seeds",
        "2",
        "--baseline",
        "random-init",
        *COMMON,
        "--jobs",
        "2",
        "--out",
        str(again),
    ]
    assert finetune_main(argv) == 0
    for which in ("pretrained", "random_init"):
        runs = [_without_time(run) for run in _report(again)[which]["per_seed"]]
        expected = [_without_time(run) for run in report[which]["per_seed"]]
        # train_loss to 1e-6 only: an earlier ZeRO-3 test in this pytest process leaves DeepSpeed's
        # zero3_linear_wrap in place of torch.nn.functional.linear, which the in-process runs above then
        # use and the spawned workers do not. Between two fresh mlm-finetune processes every field is equal.
        assert [r.pop("train_loss") for r in runs] == pytest.approx([r.pop("train_loss") for r in expected])
        assert runs == expected
    assert finetune_main([*argv[:-2], "--jobs", "0", "--out", str(tmp_path / "bad")]) == 1
    assert "--jobs must be >= 1" in capsys.readouterr().err


def _without_time(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "train_seconds"}


def test_sentence_pairs_report_matthews_correlation(tmp_path, tiny_model_dir, task_files):
    """A pair task from the same texts (do two docstrings come from one family?), split off --train."""
    _, _, rows = task_files
    rng = np.random.default_rng(0)
    texts = rows["train"]
    pairs = []
    for i in rng.permutation(len(texts))[:400]:
        j = int(rng.integers(len(texts)))
        same = "same" if texts[i]["label"] == texts[j]["label"] else "different"
        pairs.append({"a": texts[i]["text"], "b": texts[j]["text"], "same": same})
    pcsv.write_csv(pa.Table.from_pylist(pairs), tmp_path / "pairs.csv")
    out = tmp_path / "out"
    argv = [
        str(tiny_model_dir),
        "--train",
        str(tmp_path / "pairs.csv"),
        "--text-column",
        "a",
        "--text-pair-column",
        "b",
        "--label-column",
        "same",
        "--validation-fraction",
        "0.25",
        "--seeds",
        "1",
        *COMMON,
        "--out",
        str(out),
    ]
    assert finetune_main(argv) == 0
    report = _report(out)
    assert report["task"]["labels"] == ["different", "same"]
    assert report["task"]["validation_examples"] == 100 and report["task"]["train_examples"] == 300
    assert "stratified" in report["task"]["validation"]
    run = report["pretrained"]["per_seed"][0]
    assert -1.0 <= run["mcc"] <= 1.0 and report["pretrained"]["mcc_mean"] == run["mcc"]


def test_metrics_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1, 1, 0])
    predictions = np.array([0, 1, 1, 1, 0, 0])
    m = classification_metrics(labels, predictions, 2)
    # confusion: tn=2 fp=1 fn=1 tp=2 -> accuracy 4/6, F1 both classes 2/3, MCC (4-1)/sqrt(3*3*3*3) = 1/3
    assert m == pytest.approx({"accuracy": 4 / 6, "f1_macro": 2 / 3, "mcc": 1 / 3})
    three = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]), 3)
    # class 1 never predicted: F1 0; class 2: 2*2/(2+3) = 0.8; class 0: 1
    assert three == pytest.approx({"accuracy": 0.75, "f1_macro": (1 + 0 + 0.8) / 3})
