"""ModernBERT-tiny for real: 2 CPU ranks (ZeRO-2) through the real CLI and collator on the session's shards
(format 2: every row records where its documents start, so attention and rotary positions stay inside a
document). fp32 and bf16 both learn; the fp32 run resumes bit-identically after a SIGKILL, and its export
(`mlm-train export`) is a ModernBertForMaskedLM with our model's logits on padded single documents, that
`pipeline("fill-mask")` and `mlm-finetune` (AutoModelForSequenceClassification) use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pretrain.checkpoint.export import main as export_main
from pretrain.data.documents import document_inputs
from tests.helpers.processes import sigkill_then_resume
from tests.helpers.runs import run_pretrain_configs, step_trace, write_config
from tests.helpers.tasks import FAMILIES, finetune_small_task
from tests.helpers.trained import assert_export_truncates_to, trained_model

pytestmark = pytest.mark.integration

MAX_STEPS = 8
SETTINGS = {
    # local_attention 16 < the shards' 64 tokens: the local layers' window really binds. A limit of 128
    # (not 8192) keeps the export's longest input quick to run on a CPU.
    "model": {
        "arch": "modernbert",
        "preset": "tiny",
        "local_attention": 16,
        "max_position_embeddings": 128,
        "compile": False,
    },
    "masking": {"probability": 0.3},
    "train": {"max_steps": MAX_STEPS, "grad_accum_steps": 1},
    "optim": {"lr": 2e-3, "warmup_steps": 2},
    "checkpoint": {"every_steps": 2, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
}


def settings(precision: str) -> dict:
    return {**SETTINGS, "precision": precision}


@pytest.fixture(scope="module")
def baselines(tiny_shards, tmp_path_factory):
    """{precision: run} of one uninterrupted 2-rank run each, on one torchrun launch (one start-up)."""
    configs = {
        p: write_config(tmp_path_factory.mktemp(f"modernbert-{p}"), tiny_shards, **settings(p))
        for p in ("fp32", "bf16")
    }
    runs = run_pretrain_configs(list(configs.values()))
    for run in runs:
        assert run.returncode == 0, run.output[-3000:]
    return dict(zip(configs, runs, strict=True))


def assert_loss_falls(run) -> None:
    losses = run.step_losses()
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (6, 7, 8)) / 3
    assert last < first - 0.3, f"training loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_ranks_of_modernbert_tiny_learn_on_packed_documents(baselines, precision):
    run = baselines[precision]
    assert_loss_falls(run)
    record = json.loads((run.run_dir / "checkpoints" / "step-00000008" / "COMPLETE.json").read_text())
    identity = record["identity"]
    assert identity["model.arch"] == "modernbert" and record["world_size"] == 2, identity
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["precision"] == precision


def test_sigkill_then_resume_is_bit_identical(baselines, tiny_shards, tmp_path):
    config = write_config(tmp_path, tiny_shards, **settings("fp32"))
    run = sigkill_then_resume(config, tmp_path / "run", MAX_STEPS)
    assert step_trace(run.run_dir) == step_trace(baselines["fp32"].run_dir)  # losses bit for bit, same rows


def test_the_export_is_a_modernbert_for_masked_lm_with_our_logits_that_fill_mask_and_finetune_use(
    baselines, tmp_path
):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    run_dir, out = baselines["fp32"].run_dir, tmp_path / "export"
    assert export_main([str(run_dir), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForMaskedLM"] and config["model_type"] == "modernbert"
    assert config["layer_types"] == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]
    assert config["local_attention"] == 16
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 160000.0
    assert "tags: [modernbert, fill-mask" in (out / "README.md").read_text()

    hf = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    tok = AutoTokenizer.from_pretrained(str(out))
    # Padded single documents, fp32 on CPU, longer than the local window: the export's logits are ours.
    texts = ["def open(file, mode): return a file object for the path, opened in the given mode", "Return."]
    enc = tok(texts, padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1).numpy()
    assert lengths.max() > 16 and lengths.min() < lengths.max()
    keys = {
        k: torch.from_numpy(v) for k, v in document_inputs(np.zeros(enc["input_ids"].shape), lengths).items()
    }
    model = trained_model(run_dir)
    with torch.no_grad():
        ours = model.logits(model.encode(enc["input_ids"], **keys)).view(*enc["input_ids"].shape, -1)
        theirs = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    for row, n in enumerate(lengths):
        torch.testing.assert_close(theirs[row, :n], ours[row, :n], rtol=1e-5, atol=1e-5)

    predictions = pipeline("fill-mask", model=str(out))(
        f"def open(file, mode): return a {tok.mask_token} object"
    )
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)
    assert_export_truncates_to(out, 128)  # model.max_position_embeddings

    report = finetune_small_task(out, tmp_path)
    assert report["task"]["labels"] == list(FAMILIES), report
    result = report["pretrained"]["per_seed"][0]
    assert np.isfinite(result["train_loss"]) and 0.0 <= result["accuracy"] <= 1.0
