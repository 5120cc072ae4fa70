"""The `model` section of `model.arch: bert`: the BERT encoder's shape, its size presets and its options.

Torch-free: the config loader (and through it the launcher) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pretrain.errors import require
from pretrain.models.model_section import SHAPE_FIELDS, PresetShape

PresetName = Literal["tiny", "mini", "small", "medium", "base", "large"]
# The one place BERT's sizes live (Turc et al. 2019 "Well-Read Students" sizes; BERT base/large).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden_size": 128, "num_heads": 2, "intermediate_size": 512},
    "mini": {"num_layers": 4, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024},
    "small": {"num_layers": 4, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "medium": {"num_layers": 8, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "base": {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072},
    "large": {"num_layers": 24, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 4096},
}


@dataclass
class BertModelConfig(PresetShape):
    """The BERT encoder's shape; `preset` fills every shape field left unset.

    Without `model.preset` and without `model.init_from`, the four shape keys must all be set. With
    `init_from`, the checkpoint's own config sets the shape. `configs/models/<name>.yaml` are one-line
    fragments to use as `base:`. Default when the `model` section is absent: `preset: base`.
    """

    PRESETS: ClassVar[dict[str, dict[str, int]]] = PRESETS

    arch: Literal["bert"] = "bert"
    """The architecture: BERT (BertForMaskedLM, or BertForPreTraining with an NSP/SOP head)."""
    preset: PresetName | None = None
    """Named size (the presets table below); explicit shape fields override it."""
    hidden_size: int | None = None
    """Width of the hidden states."""
    num_layers: int | None = None
    """Number of transformer layers."""
    num_heads: int | None = None
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int | None = None
    """Width of the feed-forward layer (4 x hidden_size in BERT)."""
    max_position_embeddings: int = 512
    """Size of the learned position table; the longest sequence the model can take."""
    dropout: float = 0.1
    """Dropout on embeddings and hidden states (hidden_dropout_prob)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities (attention_probs_dropout_prob)."""
    init_from: str | None = None
    """A Hugging Face BERT checkpoint directory to continue pretraining from; its config sets the shape."""
    pair_head: Literal["auto", "none"] = "auto"
    """auto: add the NSP/SOP head when the shards hold sentence pairs; none: MLM only."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel of the transformers BERT encoder."""
    document_isolation: bool = False
    """Keep attention inside each packed document: a token attends only the tokens of its own document
    (block-diagonal boolean mask, the reference SDPA path) and learned positions restart at 0 at each
    document. Needs shards that record where documents start (format 2: `mlm-data build` of this
    version) and full-sentences packing (an NSP/SOP row is one pair whose segments must see each other).
    Part of the run identity: a resume that flips it is refused. The export is a plain BertForMaskedLM,
    which attends over its whole input: right for one document per input, as fine-tuning feeds it."""
    pad_vocab_to_multiple_of: int = 1
    """Round the embedding and output rows up to a multiple of this (64 on GPUs: the output projection's
    matmul then runs on full tensor-core tiles). The extra rows are never an input id (masking draws
    replacements from the tokenizer's ids only); the export keeps them (its config's vocab_size is the
    padded one, which transformers loads with any tokenizer of at most that size). 1: no padding."""

    def __post_init__(self) -> None:
        self.fill_shape_from_preset()
        if self.init_from is None:  # with it, the checkpoint's config sets the shape
            self.require_shape_set()
        self.require_vocab_multiple()
        for name in SHAPE_FIELDS:
            value = getattr(self, name)
            require(value is None or value > 0, f"model.{name} must be > 0, got {value}")
        if self.hidden_size and self.num_heads:
            require(
                self.hidden_size % self.num_heads == 0,
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})",
            )
        for name in ("dropout", "attention_dropout"):
            require(0.0 <= getattr(self, name) < 1.0, f"model.{name} must be in [0, 1)")
