"""mlm-finetune --peft lora: which modules LoRA goes on per architecture, that training changes only the
adapters and the head, and that the saved adapter (on its base) and the merged model predict alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretrain.finetune.cli import main as finetune_main
from pretrain.finetune.peft_setup import PeftSettings, apply_peft, trained_in_full
from tests.helpers.finetune import FAMILIES

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
LORA = [
    "--peft",
    "lora",
    "--epochs",
    "1",
    "--lr",
    "3e-3",
    "--max-seq-len",
    "48",
    "--batch-size",
    "32",
    "--seeds",
    "1",
]
QUIET = ["--threads", "1", "--no-progress"]


def _lora_modules(model) -> set[str]:
    """Names (without the peft prefix) of the modules that got LoRA adapters."""
    return {
        name.removeprefix("base_model.model.")
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and len(module.lora_A)
    }


def _trainable_roots(model) -> set[str]:
    """The modules holding trainable parameters: `<module>.lora` for adapters, the module for the rest."""
    roots = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            name = name.removeprefix("base_model.model.")
            roots.add(
                name.split(".lora_")[0] + ".lora" if ".lora_" in name else name.split(".modules_to_save")[0]
            )
    return roots


def test_bert_style_lora_covers_attention_and_mlp_and_trains_the_head_and_missing_pooler():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=50, num_labels=3, **TINY))
    fresh = {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    assert trained_in_full(model, fresh) == ["classifier", "bert.pooler.dense"]
    peft_model = apply_peft(model, PeftSettings(method="lora", rank=4), fresh)
    per_layer = {"attention.self.query", "attention.self.key", "attention.self.value"}
    per_layer |= {"attention.output.dense", "intermediate.dense", "output.dense"}
    expected = {f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in per_layer}
    assert _lora_modules(peft_model) == expected
    assert _trainable_roots(peft_model) == {m + ".lora" for m in expected} | {
        "classifier",
        "bert.pooler.dense",
    }


def test_modernbert_lora_covers_wqkv_wo_and_wi_and_trains_its_head():
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2}
    model = ModernBertForSequenceClassification(ModernBertConfig(vocab_size=50, num_labels=3, **TINY, **ids))
    peft_model = apply_peft(model, PeftSettings(method="lora"), set())
    expected = {
        f"model.layers.{i}.{m}" for i in range(2) for m in ("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo")
    }
    assert _lora_modules(peft_model) == expected
    assert _trainable_roots(peft_model) == {m + ".lora" for m in expected} | {"head", "classifier"}


def test_roberta_uses_the_bert_style_targets():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, num_labels=2, **TINY))
    peft_model = apply_peft(model, PeftSettings(method="lora"), set())
    assert "roberta.encoder.layer.1.attention.self.value" in _lora_modules(peft_model)
    # RoBERTa's head (classifier.dense, classifier.out_proj) is trained in full, never given adapters.
    assert not any(name.startswith("classifier") for name in _lora_modules(peft_model))
    assert "classifier" in _trainable_roots(peft_model)


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _predict(model, tokenizer, texts: list[str]) -> np.ndarray:
    batch = tokenizer(texts, truncation=True, max_length=48, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy()


def test_lora_changes_only_adapters_and_head_and_merged_predicts_as_adapter_on_base(
    tmp_path, tiny_model_dir, task_files
):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train, validation, rows = task_files
    data = ["--train", str(train), "--validation", str(validation), *LORA, *QUIET]
    # The same seed twice: once saving the adapter alone, once the merged full model.
    assert (
        finetune_main([str(tiny_model_dir), *data, "--save-model", "adapter", "--out", str(tmp_path / "a")])
        == 0
    )
    assert (
        finetune_main([str(tiny_model_dir), *data, "--save-model", "full", "--out", str(tmp_path / "f")]) == 0
    )
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    adapter_dir, full_dir = (
        tmp_path / "a" / "models" / "pretrained-seed-0",
        tmp_path / "f" / "models" / "pretrained-seed-0",
    )

    # The adapter file holds the LoRA matrices and the fully trained modules (classifier, the pooler the
    # MLM-only base lacks), and exactly as many numbers as the report says were trainable.
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert all(".lora_A." in k or ".lora_B." in k or ".classifier." in k or ".pooler." in k for k in adapter)
    assert sum(t.numel() for t in adapter.values()) == report["parameters"]["trainable"]
    assert report["parameters"]["trainable"] < report["parameters"]["total"] / 4
    # The total is the classifier model's own parameters plus the adapters, each trained module once.
    classifier = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=len(FAMILIES)
    )
    lora = sum(t.numel() for k, t in adapter.items() if ".lora_" in k)
    assert report["parameters"]["total"] == sum(p.numel() for p in classifier.parameters()) + lora

    # Only adapters and head changed: every weight of the merged model that the base has is the base's
    # own, bit for bit, except the weight matrices LoRA was merged into, which all moved.
    base, merged = _weights(tiny_model_dir), _weights(full_dir)
    targets = (".query.", ".key.", ".value.", ".dense.")
    shared = [k for k in merged if k in base]
    assert len(shared) > 20
    for key in shared:
        lora_target = key.endswith(".weight") and any(t in key for t in targets) and ".encoder." in key
        assert torch.equal(merged[key], base[key]) != lora_target, key

    # The merged model, loaded without peft, predicts what base + adapter predicts, and its accuracy is
    # the one in the report.
    tokenizer = AutoTokenizer.from_pretrained(str(full_dir))
    texts = [r["text"] for r in rows["validation"]]
    full = AutoModelForSequenceClassification.from_pretrained(str(full_dir))
    on_base = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=len(FAMILIES)),
        str(adapter_dir),
    )
    merged_logits, adapter_logits = _predict(full, tokenizer, texts), _predict(on_base, tokenizer, texts)
    np.testing.assert_allclose(merged_logits, adapter_logits, atol=1e-4)
    labels = np.array([full.config.label2id[r["label"]] for r in rows["validation"]])
    accuracy = float(np.mean(merged_logits.argmax(-1) == labels))
    assert accuracy == pytest.approx(report["pretrained"]["accuracy_mean"])


def test_peft_flag_errors_are_one_line(tmp_path, tiny_model_dir, task_files, capsys):
    train, validation, _ = task_files
    data = ["--train", str(train), "--validation", str(validation), *QUIET, "--out", str(tmp_path / "o")]
    assert finetune_main([str(tiny_model_dir), *data, "--save-model", "adapter"]) == 1
    assert "--save-model adapter needs --peft lora" in capsys.readouterr().err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("{}\n")
    assert finetune_main([str(run_dir), *data, *LORA, "--save-model", "adapter"]) == 1
    assert "export it first (mlm-train export RUN OUT)" in capsys.readouterr().err
    assert finetune_main([str(tiny_model_dir), *data, *LORA, "--lora-target-modules", "q_proj"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlm-finetune: error: --lora-target-modules q_proj:") and err.count("\n") == 1
    assert finetune_main([str(tiny_model_dir), *data, *LORA, "--lora-rank", "0"]) == 1
    assert "--lora-rank must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
