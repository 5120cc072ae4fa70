"""Fixtures of the fine-tuning tests: the real sample task restricted to three families, and a tiny
BERT with a real WordPiece tokenizer (an MLM-only model, like our exports)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch

from tests.helpers.finetune import FAMILIES


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """(train.jsonl, validation.csv, rows): the sample task restricted to three families (two formats)."""
    from data_pipeline.samples.task import write_sample_task

    root = tmp_path_factory.mktemp("finetune-task")
    write_sample_task(str(root / "full"))
    rows = {}
    for split in ("train", "validation"):
        lines = (root / "full" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows[split] = [r for r in map(json.loads, lines) if r["label"] in FAMILIES]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows["train"]), encoding="utf-8")
    pcsv.write_csv(pa.Table.from_pylist(rows["validation"]), root / "validation.csv")
    return root / "train.jsonl", root / "validation.csv", rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, task_files):
    """A 2-layer, hidden-32 BertForMaskedLM (no pooler, like our MLM exports) with a real WordPiece."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from data_pipeline.tokenizer.load import train_tokenizer

    root = tmp_path_factory.mktemp("finetune-model")
    (root / "corpus").mkdir()
    texts = [r["text"] for r in task_files[2]["train"]]  # the unlabelled training texts
    (root / "corpus" / "train.txt").write_text("\n\n".join(texts), encoding="utf-8")
    train_tokenizer([str(root / "corpus")], "wordpiece", 1000, str(root / "tokenizer"))
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return root / "model"
