"""The `model` section of `model.arch: roberta`: BERT's shape, presets and options (a subclass, so an option
added to BERT's section is RoBERTa's too), with RoBERTa's architecture name, position table and no pair head.

Torch-free: the config loader (and through it the launcher) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pretrain.models.bert.config import BertModelConfig


@dataclass
class RobertaModelConfig(BertModelConfig):
    """RoBERTa's encoder (Liu et al. 2019): BERT's layers and sizes (the same presets; RoBERTa-base is
    `preset: base`), learned positions numbered from the pad id + 1, one token type, no NSP/SOP head
    (shards of sentence pairs are refused: build them with `--mode full-sentences`). Train it on shards of a
    byte-level BPE tokenizer (`mlm-data tokenizer --kind bpe`) or of any RoBERTa tokenizer dir.
    """

    arch: Literal["roberta"] = "roberta"
    """The architecture: RoBERTa (exported as RobertaForMaskedLM)."""
    max_position_embeddings: int = 512
    """The longest row the model takes. RoBERTa numbers positions from the pad id + 1, so the exported
    position table has pad id + 1 more rows (514 for 512 with RoBERTa's <pad> = 1)."""
    init_from: str | None = None
    """A Hugging Face RoBERTa checkpoint directory to continue pretraining from; its config sets the shape."""
    pair_head: Literal["none"] = "none"
    """RoBERTa has no NSP/SOP head (only `none`); shards of sentence pairs are refused."""
