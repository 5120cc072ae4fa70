"""mlm-finetune on a real run dir: a one-process pretraining run's newest checkpoint is exported on the fly
(into a temporary dir that is removed afterwards) and fine-tunes exactly like its `mlm-train export`; the
export also fine-tunes on the offline token task."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import pytest

from pretrain.checkpoint.export import main as export_main
from pretrain.finetune.cli import main as finetune_main
from tests.helpers.runs import run_pretrain, write_config
from tests.helpers.tasks import small_sample_task

pytestmark = pytest.mark.integration


def _finetune(model, train, validation, out, extra=()):
    argv = [
        str(model),
        "--train",
        str(train),
        "--validation",
        str(validation),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--max-seq-len",
        "32",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]
    assert finetune_main(argv) == 0
    return json.loads((out / "report.json").read_text())


def test_finetune_a_run_dir_equals_finetuning_its_export(tiny_shards, tmp_path, monkeypatch, caplog):
    config = write_config(
        tmp_path,
        tiny_shards,
        train={"max_steps": 6, "grad_accum_steps": 1},
        checkpoint={"every_steps": 3},
        eval={"every_steps": None},
    )
    run = run_pretrain(config, ranks=1)
    assert run.returncode == 0, run.output[-3000:]
    train, validation = small_sample_task(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    with caplog.at_level(logging.INFO, logger="mlm-finetune"):
        from_run = _finetune(run.run_dir, train, validation, tmp_path / "from-run")
    assert "exported the newest valid checkpoint" in caplog.text and "no pooler" in caplog.text
    assert from_run["model_source"] == "exported from a run or checkpoint dir"
    assert not [name for name in os.listdir(scratch) if name.startswith("mlm-finetune")]  # export removed

    assert export_main([str(run.run_dir), str(tmp_path / "export")]) == 0
    from_export = _finetune(tmp_path / "export", train, validation, tmp_path / "from-export")
    assert from_export["model_source"] == "model dir"
    assert (
        from_run["pretrained"]["per_seed"][0]["accuracy"]
        == from_export["pretrained"]["per_seed"][0]["accuracy"]
    )
    assert (
        from_run["pretrained"]["per_seed"][0]["train_loss"]
        == from_export["pretrained"]["per_seed"][0]["train_loss"]
    )

    # The same export tags words: the offline token task (a slice), scored per entity.
    from data_pipeline.samples.token_task import write_token_task

    write_token_task(str(tmp_path / "ner"))
    for split, n in (("train", 120), ("validation", 40)):
        lines = (tmp_path / "ner" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (tmp_path / f"ner-{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["--task", "token-classification", "--baseline", "random-init"]
    tagged = _finetune(
        tmp_path / "export",
        tmp_path / "ner-train.jsonl",
        tmp_path / "ner-validation.jsonl",
        tmp_path / "ner-out",
        argv,
    )
    assert tagged["task"]["type"] == "token-classification" and tagged["task"]["validation_sentences"] == 40
    assert (
        set(tagged["pretrained"]["per_type"])
        == set(tagged["random_init"]["per_type"])
        == {"ARG", "EXC", "MOD"}
    )
