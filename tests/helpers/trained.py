"""The model of a finished run, as the trainer built it, holding its newest checkpoint's fp32 weights:
what an export test compares the exported `transformers` model with."""

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
