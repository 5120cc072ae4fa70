"""A small labelled task for fine-tuning tests: the sample task (data_pipeline/samples/task.py) cut down."""

from __future__ import annotations

import json
from pathlib import Path

FAMILIES = ("asyncio", "email", "xml")


def small_sample_task(tmp_path: Path) -> tuple[Path, Path]:
    """(train.jsonl, validation.jsonl) under `tmp_path`: the sample task's rows of three stdlib families,
    80 per family for training and 25 for validation."""
    from data_pipeline.samples.task import write_sample_task

    write_sample_task(str(tmp_path / "task"))
    for split, per_class in (("train", 80), ("validation", 25)):
        lines = (tmp_path / "task" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [r for r in map(json.loads, lines) if r["label"] in FAMILIES]
        rows = [r for i, r in enumerate(rows) if sum(q["label"] == r["label"] for q in rows[:i]) < per_class]
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
    return tmp_path / "train.jsonl", tmp_path / "validation.jsonl"


def finetune_small_task(model_dir: Path, tmp_path: Path) -> dict:
    """The report.json of one quick `mlm-finetune` run (1 seed, 1 epoch, rows of 32 tokens) of `model_dir`
    on `small_sample_task`, under tmp_path/finetune; asserts the command exits 0."""
    from pretrain.finetune.cli import main as finetune_main

    train, validation = small_sample_task(tmp_path)
    out = tmp_path / "finetune"
    argv = [str(model_dir), "--train", str(train), "--validation", str(validation), "--seeds", "1"]
    argv += ["--epochs", "1", "--lr", "1e-3", "--max-seq-len", "32", "--threads", "1", "--no-progress"]
    assert finetune_main([*argv, "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())
