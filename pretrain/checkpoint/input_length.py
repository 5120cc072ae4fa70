"""The longest input a `transformers` model takes, read from its config: the one rule the export (which
writes it into the tokenizer as `model_max_length`) and `mlm-finetune` (its default max_seq_len) apply."""

from __future__ import annotations

# Model types whose position ids start after the padding id (RoBERTa's convention): pad_token_id + 1 rows
# of their max_position_embeddings are never a text position.
POSITIONS_AFTER_PAD = ("roberta", "xlm-roberta", "camembert")


def longest_input(hf_config) -> int | None:
    """The most tokens (special tokens included) a model with `hf_config` (a `transformers` config) reads:
    its max_position_embeddings (BERT's table; ModernBERT's rotary limit), less the pad id + 1 for the model
    types of POSITIONS_AFTER_PAD. None when the config has no max_position_embeddings."""
    positions = getattr(hf_config, "max_position_embeddings", None)
    if not positions:
        return None
    if hf_config.model_type in POSITIONS_AFTER_PAD:
        positions -= (hf_config.pad_token_id or 0) + 1
    return int(positions)
