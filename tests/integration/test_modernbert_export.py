"""ModernBERT end to end after training: a real DeepSpeed checkpoint (ZeRO-2, the session's shards) ->
`mlm-train export` -> `AutoModelForMaskedLM` (ModernBertForMaskedLM) with the trained model's logits on
padded single documents, `pipeline("fill-mask")`, and `mlm-finetune` on the export
(AutoModelForSequenceClassification). Built from the real components in one process, as test_export.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.checkpoint.export import main as export_main
from pretrain.checkpoint.manager import CheckpointManager
from pretrain.config import config_from_dict, config_hash, save_config
from pretrain.data.documents import document_inputs
from tests.helpers.engine import init_process_group

pytestmark = pytest.mark.integration
SEQ = 32


def document_batch(collator, reader, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """A masked micro-batch of shard rows with the document keys of pretrain/data/documents.py (each row
    one document here: this test is about export, test_modernbert.py about isolation)."""
    rows = reader.take(indices)
    batch = collator.collate(rows, indices, 0)
    lengths = np.minimum(rows["length"], SEQ)
    return batch | {
        k: torch.from_numpy(v) for k, v in document_inputs(np.zeros((len(indices), SEQ)), lengths).items()
    }


@pytest.fixture(scope="module")
def exported(tiny_shards, tmp_path_factory):
    """(the trained engine, the export dir, the tag dir) of 4 steps of a tiny ModernBERT under ZeRO-2."""
    from data_pipeline.shards import ShardReader
    from pretrain.checkpoint.identity import describe_run, source_tokenizer_files
    from pretrain.data.masking import MaskingCollator
    from pretrain.models.registry import build_model
    from pretrain.runtime.engine import initialize_engine

    root = tmp_path_factory.mktemp("modernbert-export")
    run_dir = root / "run"
    init_process_group()
    cfg = config_from_dict(
        {
            "run_dir": str(run_dir),
            "data": {"path": str(tiny_shards)},
            "model": {
                "arch": "modernbert",
                "hidden_size": 32,
                "num_layers": 3,
                "num_heads": 2,
                "intermediate_size": 48,
                "local_attention": 8,
                "compile": False,
            },
            "masking": {"probability": 0.3},
            "train": {"max_steps": 4, "micro_batch_size": 4},
            "zero": {"stage": 2},
            "optim": {"lr": 3e-3},
            "checkpoint": {"every_steps": 4},
        }
    )
    source = ShardReader(str(tiny_shards))
    torch.manual_seed(0)
    model = build_model(
        cfg.model, vocab_size=source.vocab_size, pad_id=source.special_ids["pad"], rows_have_pairs=False
    )
    run = describe_run(cfg, model, source, seq_len=SEQ, tokenizer_files=source_tokenizer_files(source))
    engine = initialize_engine(cfg, model, 1, on_gpu=False)
    collator = MaskingCollator(
        cfg.masking,
        special_ids=source.special_ids,
        vocab_size=source.vocab_size,
        seed=0,
        seq_len=SEQ,
        batch_keys=model.batch_keys,
    )
    for step in range(4):
        out = engine(**document_batch(collator, source, np.arange(4 * step, 4 * step + 4)))
        engine.backward(out.mlm_loss_sum)
        engine.step()
    run_dir.mkdir(parents=True)
    save_config(cfg, str(run_dir / "config.yaml"))
    manager = CheckpointManager(
        str(run_dir), cfg.checkpoint, rank=0, world_size=1, config_hash=config_hash(cfg), run=run
    )
    tag_dir = manager.save(engine, {"step": 4, "tokens": 512, "consumed_samples": 16}, 4)
    assert export_main([str(run_dir), str(root / "hf")]) == 0
    return engine, root / "hf", Path(tag_dir)


def test_the_export_is_a_modernbert_for_masked_lm_with_the_trained_logits(exported):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    engine, out_dir, tag_dir = exported
    saved = json.loads((tag_dir / "hf_config.json").read_text())
    assert saved["architectures"] == ["ModernBertForMaskedLM"] and saved["model_type"] == "modernbert"
    config = json.loads((out_dir / "config.json").read_text())
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    assert (
        config["local_attention"] == 8
        and config["rope_parameters"]["full_attention"]["rope_theta"] == 160000.0
    )
    assert (out_dir / "model.safetensors").exists()
    assert "tags: [modernbert, fill-mask" in (out_dir / "README.md").read_text()

    hf = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    texts = ["def open(file, mode): return a file object", "the logging module"]
    enc = tok(texts, padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1).numpy()
    keys = {
        k: torch.from_numpy(v) for k, v in document_inputs(np.zeros(enc["input_ids"].shape), lengths).items()
    }
    module = engine.module.eval()
    with torch.no_grad():
        ours = module.logits(module.encode(enc["input_ids"], **keys)).view(*enc["input_ids"].shape, -1)
        theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    for row, n in enumerate(lengths):
        torch.testing.assert_close(theirs[row, :n], ours[row, :n], rtol=1e-5, atol=1e-5)


def test_fill_mask_runs_on_the_export(exported):
    from transformers import AutoTokenizer, pipeline

    _, out_dir, _ = exported
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    predictions = pipeline("fill-mask", model=str(out_dir))(
        f"def open(file, mode): return a {tok.mask_token} object"
    )
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)


def test_mlm_finetune_fine_tunes_the_export(exported, tmp_path):
    from data_pipeline.samples.task import write_sample_task
    from pretrain.finetune.cli import main as finetune_main

    _, out_dir, _ = exported
    write_sample_task(str(tmp_path / "task"))
    for split, per_class in (("train", 40), ("validation", 15)):
        lines = (tmp_path / "task" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [r for r in map(json.loads, lines) if r["label"] in ("asyncio", "email")]
        rows = [r for i, r in enumerate(rows) if sum(q["label"] == r["label"] for q in rows[:i]) < per_class]
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
    argv = [
        str(out_dir),
        "--train",
        str(tmp_path / "train.jsonl"),
        "--validation",
        str(tmp_path / "validation.jsonl"),
    ]
    argv += [
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
    ]
    assert finetune_main([*argv, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    result = report["pretrained"]["per_seed"][0]
    assert np.isfinite(result["train_loss"]) and 0.0 <= result["accuracy"] <= 1.0
