"""What an export test checks an export against: the model of a finished run, as the trainer built it,
holding its newest checkpoint's fp32 weights; and the export's own limit on input length."""

from __future__ import annotations


def trained_model(run_dir):
    """The run's model (built by the registry from the checkpoint's config.yaml) with the fp32 weights of
    run_dir's newest complete checkpoint, in eval mode."""
    from data_pipeline.shards import ShardReader
    from pretrain.checkpoint.consolidate import fp32_weights
    from pretrain.checkpoint.manager import resolve_checkpoint
    from pretrain.config import load_config
    from pretrain.models.registry import build_model

    tag_dir, record = resolve_checkpoint(str(run_dir))
    cfg = load_config(f"{tag_dir}/config.yaml")
    source = ShardReader(cfg.data.path)
    model = build_model(
        cfg.model, vocab_size=source.vocab_size, pad_id=source.special_ids["pad"], rows_have_pairs=False
    )
    model.load_state_dict(fp32_weights(tag_dir, record), strict=True)
    return model.eval()


def assert_export_truncates_to(out_dir, limit: int) -> None:
    """The export in `out_dir`, loaded with AutoTokenizer, says `limit` as its model_max_length, and a text
    longer than that, tokenized with truncation=True, is cut to `limit` tokens that its
    AutoModelForMaskedLM runs on (a position past the model's table would fail)."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    assert tokenizer.model_max_length == limit
    text = " ".join(["return a file object"] * limit)
    assert len(tokenizer(text, verbose=False)["input_ids"]) > limit
    batch = tokenizer(text, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape == (1, limit)
    model = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == (1, limit) and bool(torch.isfinite(logits).all())
