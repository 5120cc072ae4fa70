"""RoBERTa for real: a byte-level BPE trained and shards built by `mlm-data` on the tests' real text, 2 CPU
ranks of roberta-tiny (ZeRO-2, fp32) whose loss falls and which resumes bit-identically after a SIGKILL,
and the export of that run: a RobertaForMaskedLM with our model's logits that fill-mask and mlm-finetune
use."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.checkpoint.export import main as export_main
from tests.helpers.processes import sigkill_then_resume
from tests.helpers.runs import build_shards, mlm_data, run_pretrain, step_trace, write_config
from tests.helpers.tasks import FAMILIES, finetune_small_task
from tests.helpers.trained import assert_export_truncates_to, trained_model

pytestmark = pytest.mark.integration

MAX_STEPS = 8
SETTINGS = {
    "model": {"arch": "roberta", "preset": "tiny"},
    "train": {"max_steps": MAX_STEPS, "grad_accum_steps": 1},
    "optim": {"lr": 2e-3, "warmup_steps": 2},
    "checkpoint": {"every_steps": 2, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
}


@pytest.fixture(scope="module")
def bpe_shards(tiny_corpus_and_tokenizer, tmp_path_factory):
    """Full-sentence shards (seq_len 64) of the tests' corpus with a 2000-entry byte-level BPE."""
    corpus, _ = tiny_corpus_and_tokenizer
    root = tmp_path_factory.mktemp("roberta-data")
    tokenizer = root / "tokenizer"
    mlm_data(
        "tokenizer", "--input", str(corpus), "--kind", "bpe", "--vocab-size", "2000", "--out", str(tokenizer)
    )
    return build_shards(corpus, tokenizer, root / "shards", "full-sentences")


@pytest.fixture(scope="module")
def baseline(bpe_shards, tmp_path_factory):
    """One uninterrupted 2-rank run; its run dir keeps checkpoints 2, 4, 6, 8."""
    run = run_pretrain(write_config(tmp_path_factory.mktemp("roberta-baseline"), bpe_shards, **SETTINGS))
    assert run.returncode == 0, run.output[-3000:]
    return run


def test_two_ranks_learn_and_resume_bit_identically_after_sigkill(baseline, bpe_shards, tmp_path):
    losses = baseline.step_losses()
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (6, 7, 8)) / 3
    assert last < first - 0.3, f"training loss did not fall: {first:.3f} -> {last:.3f}"
    record = json.loads((baseline.run_dir / "checkpoints" / "step-00000008" / "COMPLETE.json").read_text())
    assert record["identity"]["model.arch"] == "roberta" and record["world_size"] == 2

    run = sigkill_then_resume(write_config(tmp_path, bpe_shards, **SETTINGS), tmp_path / "run", MAX_STEPS)
    assert step_trace(run.run_dir) == step_trace(baseline.run_dir)  # losses bit for bit, the same rows


def test_export_is_a_roberta_for_masked_lm_with_our_logits_that_fill_mask_and_finetune_use(
    baseline, tmp_path
):
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        RobertaForMaskedLM,
        RobertaTokenizerFast,
        pipeline,
    )

    out = tmp_path / "export"
    assert export_main([str(baseline.run_dir), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["RobertaForMaskedLM"] and config["model_type"] == "roberta"
    assert (config["max_position_embeddings"], config["type_vocab_size"], config["pad_token_id"]) == (
        514,
        1,
        1,
    )
    hf = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert isinstance(hf, RobertaForMaskedLM) and isinstance(tok, RobertaTokenizerFast)
    assert "tags: [roberta, fill-mask, mlm-pretrain]" in (out / "README.md").read_text()

    # Padded single documents, fp32 on CPU: the export's logits are our model's.
    texts = ["def open(file, mode): return a file object", "Return the list of names."]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert bool((batch["attention_mask"] == 0).any())
    model = trained_model(baseline.run_dir)
    with torch.no_grad():
        got = hf(**batch).logits
        expected = model.cls.predictions(model.bert(**batch).last_hidden_state)
        positions = batch["attention_mask"].flatten().nonzero().flatten()
        labels = batch["input_ids"].flatten()[positions]
        ours = model(**batch, masked_positions=positions, masked_labels=labels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    dense = got.reshape(-1, got.shape[-1])[positions]
    torch.testing.assert_close(
        ours.mlm_loss_sum, torch.nn.functional.cross_entropy(dense, labels, reduction="sum")
    )
    assert int(ours.mlm_correct) == int((dense.argmax(-1) == labels).sum())

    fill = pipeline("fill-mask", model=str(out))
    predictions = fill(f"def open(file, mode): return a {tok.mask_token} object")
    assert len(predictions) == 5 and all(p["token_str"] for p in predictions)
    assert_export_truncates_to(out, 512)  # the table's 514 rows less the pad id + 1 before position 0

    report = finetune_small_task(out, tmp_path)
    assert report["task"]["labels"] == list(FAMILIES), report
