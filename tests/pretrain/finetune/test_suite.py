"""mlm-finetune suite: tasks x models on tiny budgets; the table and its average against the per-run reports;
the default (offline) suite; suite files refused before any run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pretrain.finetune.cli import main as finetune_main

TINY_BUDGET = "{epochs: 1, lr: 3.0e-3, max_seq_len: 48, batch_size: 32}"
QUIET = ["--set", "threads=1", "--no-progress"]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, tiny_model_dir):
    """The tiny model's architecture and tokenizer with other random weights (a second model to compare)."""
    from transformers import BertForMaskedLM

    out = tmp_path_factory.mktemp("second") / "other"
    shutil.copytree(tiny_model_dir, out)
    torch.manual_seed(1)
    config = BertForMaskedLM.config_class.from_pretrained(str(tiny_model_dir))
    BertForMaskedLM(config).save_pretrained(str(out))
    return out


def _write_suite(path, task_files) -> None:
    train, validation, rows = task_files
    two = [r for r in rows["train"] if r["label"] in ("asyncio", "xml")]
    (path.parent / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in two), encoding="utf-8")
    path.write_text(
        f"""seeds: 2
tasks:
  - name: three-families
    train: {train}
    validation: {validation}
    budget: {TINY_BUDGET}
  - name: two-families
    task: sequence-classification
    train: two.jsonl
    metric: f1_macro
    budget: {TINY_BUDGET}
    options: {{validation-fraction: 0.2}}
""",
        encoding="utf-8",
    )


def test_suite_table_and_average_over_two_tasks_and_two_models(
    tmp_path, tiny_model_dir, second_model, task_files, capsys
):
    suite = tmp_path / "suite.yaml"
    _write_suite(suite, task_files)
    out = tmp_path / "out"
    assert (
        finetune_main(
            ["suite", str(suite), str(tiny_model_dir), str(second_model), "--out", str(out), *QUIET]
        )
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads((out / "suite.json").read_text())
    assert list(result["models"]) == ["model", "other"] and result["seeds"] == 2
    assert [t["name"] for t in result["tasks"]] == ["three-families", "two-families"]
    assert [t["metric"] for t in result["tasks"]] == ["accuracy", "f1_macro"]
    for task in result["tasks"]:
        for label in ("model", "other"):
            report = json.loads((out / "runs" / task["name"] / label / "report.json").read_text())
            assert report["model"] == result["models"][label]  # each row is its own model's runs
            per_seed = [run[task["metric"]] for run in report["pretrained"]["per_seed"]]
            assert task["rows"][label]["per_seed"] == per_seed
            assert task["rows"][label]["mean"] == pytest.approx(
                report["pretrained"][task["metric"] + "_mean"]
            )
    first = result["tasks"][0]["rows"]
    # The average: per seed, the mean over the tasks; then mean and sample std over the seeds.
    for label in ("model", "other"):
        per_seed = np.mean([t["rows"][label]["per_seed"] for t in result["tasks"]], axis=0)
        average = result["average"][label]
        assert average["mean"] == pytest.approx(per_seed.mean())
        assert average["std"] == pytest.approx(per_seed.std(ddof=1))
        row = f"| {label} | {first[label]['mean']:.4f} ± {first[label]['std']:.4f} |"
        assert row in printed and row in (out / "suite.md").read_text()
    assert "| model | three-families (accuracy) | two-families (f1_macro) | average (2 tasks) |" in printed


def test_default_suite_is_the_offline_sample_tasks(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    argv = [
        "suite",
        "default",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--seeds",
        "1",
        "--baseline",
        "random-init",
    ]
    tiny = [
        "--set",
        "epochs=0.25",
        "--set",
        "max-seq-len=32",
        "--set",
        "lr=3e-3",
        "--set",
        "batch-size=32",
        *QUIET,
    ]
    assert finetune_main(argv + tiny) == 0
    result = json.loads((out / "suite.json").read_text())
    task, tokens = result["tasks"]
    assert (
        task["name"] == "stdlib-docstrings" and (out / "data" / "stdlib-docstrings" / "train.jsonl").is_file()
    )
    assert set(task["rows"]) == {"model", "model (random init)"}
    report = json.loads((out / "runs" / "stdlib-docstrings" / "model" / "report.json").read_text())
    assert report["task"]["train_examples"] > 1000 and report["settings"]["epochs"] == 0.25
    assert tokens["name"] == "stdlib-names" and tokens["metric"] == "f1"
    report = json.loads((out / "runs" / "stdlib-names" / "model" / "report.json").read_text())
    assert report["task"]["type"] == "token-classification"


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "tasks:\n  - name: a\n    trian: x.jsonl\n",
            "unknown key tasks[0].trian; did you mean tasks[0].train?",
        ),
        (
            "tasks:\n  - name: a\n    train: x.jsonl\n    task: ner\n",
            "task 'ner': use one of sequence-classification",
        ),
        (
            "tasks:\n  - name: a\n    train: x.jsonl\n    metric: bleu\n",
            "metric 'bleu': sequence-classification",
        ),
        ("tasks:\n  - name: ../a\n    train: x.jsonl\n", "a task name is unique and made of letters"),
        ("tasks:\n  - name: a\n    train: x.jsonl\n    options: {out: y}\n", "out is set by the suite"),
        (
            "tasks:\n  - name: a\n    train: x.jsonl\n    budget: {epoch: 1}\n",
            "task a: unrecognized arguments",
        ),
        ("tasks: []\n", "at least one task"),
    ],
)
def test_bad_suite_files_are_refused_before_any_run(tmp_path, tiny_model_dir, capsys, body, message):
    suite = tmp_path / "suite.yaml"
    suite.write_text(body, encoding="utf-8")
    assert finetune_main(["suite", str(suite), str(tiny_model_dir), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlm-finetune suite: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "runs").exists()
