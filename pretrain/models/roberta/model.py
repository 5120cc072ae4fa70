"""RoBERTa's pretraining model: the `transformers` RoBERTa encoder plus the sparse MLM head (the
`PretrainingModel` of `model.arch: roberta`, pretrain/models/architecture.py).

RoBERTa's encoder layers are BERT's; what differs is around them: positions are numbered from the pad id
+ 1 (so the position table has pad id + 1 more rows than the longest row), there is one token type, the
MLM head is `lm_head` (dense, GELU, layer norm, decoder tied to the embeddings) and there is no pair head.
The model subclasses BERT's (pretrain/models/bert/model.py) and reuses its forward, losses, batch keys
and shape, so what BERT's model learns (new options, new batch keys) RoBERTa's has too. Parameter names
equal `RobertaForMaskedLM`'s, so `model.state_dict()` loads into it with `strict=True` and export is a
plain save.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.nn import init
from transformers import RobertaConfig, RobertaForMaskedLM
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings, RobertaLMHead, RobertaModel

from pretrain.errors import ConfigError
from pretrain.models.bert.model import MLMPretrainingModel, _bert_config
from pretrain.models.init_from import init_from_config
from pretrain.models.roberta.config import RobertaModelConfig

EXPORT_CLASS = "RobertaForMaskedLM"


class RobertaMLMPretrainingModel(MLMPretrainingModel):
    """RoBERTa encoder + sparse MLM head. Build it with `build_model`."""

    config_class = RobertaConfig
    base_model_prefix = "roberta"
    # Same ties as RobertaForMaskedLM: the decoder shares the word embeddings.
    _tied_weights_keys = {
        "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    }

    def __init__(self, config: RobertaConfig, document_isolation: bool = False) -> None:
        """Randomly initialised model for `config` (a RobertaConfig with type_vocab_size 1);
        `document_isolation` keeps attention and positions inside each packed document (as BERT's)."""
        # BERT's __init__ would build BERT's modules: initialise the PreTrainedModel level only.
        super(MLMPretrainingModel, self).__init__(config)
        self.has_pair_head = False
        self.document_isolation = document_isolation
        config.architectures = [EXPORT_CLASS]  # what AutoModel picks when the export is loaded
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    # BERT's forward reaches the encoder as `self.bert` and the MLM head as `self.cls.predictions`; these
    # name RoBERTa's modules (registered once, as `roberta` and `lm_head`, the names the export needs).
    @property
    def bert(self) -> RobertaModel:
        """The encoder, under the name BERT's code uses."""
        return self.roberta

    @property
    def cls(self) -> SimpleNamespace:
        """The MLM head, as `cls.predictions` (the name BERT's code uses)."""
        return SimpleNamespace(predictions=self.lm_head)

    def _init_weights(self, module) -> None:
        """BERT's initialisation (normal(0, initializer_range) weights, zero biases, unit norms) plus the
        parts of RoBERTa's modules that RobertaPreTrainedModel sets."""
        super()._init_weights(module)
        if isinstance(module, RobertaLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, RobertaEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """BERT's batch keys without token_type_ids (one token type: the encoder fills zeros)."""
        return tuple(key for key in super().batch_keys if key != "token_type_ids")

    @property
    def max_positions(self) -> int:
        """The longest row the model takes: the position table less the pad id + 1 rows before position 0."""
        return self.config.max_position_embeddings - self.config.pad_token_id - 1

    def shape(self) -> dict:
        """BERT's shape record, with the longest row (not the table size) as max_position_embeddings."""
        return {**super().shape(), "max_position_embeddings": self.max_positions}

    @property
    def export_class_name(self) -> str:
        """The HF class our state dict loads into: RobertaForMaskedLM."""
        return EXPORT_CLASS

    def get_output_embeddings(self):
        """The MLM decoder (tied to the input embeddings)."""
        return self.lm_head.decoder

    def encode(
        self, input_ids, attention_mask=None, token_type_ids=None, document_ids=None, position_ids=None
    ):
        """BERT's `encode`. Positions given with the batch (documents that each start at 0) move to
        RoBERTa's numbering, from the pad id + 1; without them the encoder numbers the non-pad tokens
        itself, as RobertaForMaskedLM does."""
        if position_ids is not None:
            position_ids = position_ids + (self.config.pad_token_id + 1)
        return super().encode(input_ids, attention_mask, token_type_ids, document_ids, position_ids)

    def flops_per_token(self, seq_len: int, masked_fraction: float = 0.15) -> float:
        """Training FLOPs per input token, counted as BERT's (`MLMPretrainingModel.flops_per_token`): the
        encoder's matmuls and attention on every token, the head (dense + vocabulary projection) on the
        masked ones."""
        c = self.config
        n_encoder = sum(p.numel() for p in self.roberta.encoder.parameters())
        n_head = c.hidden_size * c.hidden_size + c.hidden_size + c.hidden_size * c.vocab_size
        attention = 12 * c.num_hidden_layers * c.hidden_size * seq_len
        return 6 * n_encoder + attention + masked_fraction * 6 * n_head


def _roberta_config(model_cfg: RobertaModelConfig, vocab_size: int, pad_id: int) -> RobertaConfig:
    """BERT's HF config of `model_cfg` as a RobertaConfig: one token type, and a position table with the
    pad id + 1 rows that come before RoBERTa's first position."""
    bert_config = _bert_config(model_cfg, vocab_size, pad_id).to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        bert_config.pop(key, None)
    bert_config["max_position_embeddings"] = model_cfg.max_position_embeddings + pad_id + 1
    bert_config["type_vocab_size"] = 1
    return RobertaConfig(**bert_config)


def build_model(
    model_cfg: RobertaModelConfig,
    *,
    vocab_size: int,
    pad_id: int,
    rows_have_pairs: bool,
    tokenizer_source: str = "the shards' tokenizer",
) -> RobertaMLMPretrainingModel:
    """Build the model from scratch, or from the HF RoBERTa checkpoint dir `model_cfg.init_from`.

    vocab_size / pad_id come from the shards' tokenizer (named by `tokenizer_source` in errors). Raises
    ConfigError when the rows hold sentence pairs (RoBERTa has no pair head), when the pad id would
    make the position table mostly unused rows, or when init_from is not a RoBERTa checkpoint dir or
    differs from the shards' tokenizer in vocabulary size or pad id.
    """
    if rows_have_pairs:
        raise ConfigError(
            f"model.arch roberta has no NSP/SOP head but {tokenizer_source} built shards of sentence pairs; "
            "build the shards with mlm-data build --mode full-sentences (or use model.arch bert)"
        )
    if model_cfg.init_from is not None:
        return _from_pretrained(model_cfg, vocab_size, pad_id, tokenizer_source)
    if pad_id > model_cfg.max_position_embeddings:
        raise ConfigError(
            f"{tokenizer_source} has pad id {pad_id}: RoBERTa's positions start after it, so the position "
            f"table would be mostly unused rows; use a tokenizer whose <pad> is a low id (mlm-data "
            "tokenizer --kind bpe gives <pad> = 1, as RoBERTa's)"
        )
    config = _roberta_config(model_cfg, model_cfg.padded_vocab_size(vocab_size), pad_id)
    config._attn_implementation = model_cfg.attn_implementation
    return RobertaMLMPretrainingModel(config, document_isolation=model_cfg.document_isolation)


def _from_pretrained(
    model_cfg: RobertaModelConfig, vocab_size: int, pad_id: int, tokenizer_source: str
) -> RobertaMLMPretrainingModel:
    src = model_cfg.init_from
    config = init_from_config(src, RobertaConfig, "RoBERTa")
    padded = model_cfg.padded_vocab_size(vocab_size)
    if config.vocab_size not in (vocab_size, padded) or config.pad_token_id != pad_id:
        raise ConfigError(
            f"tokenizer mismatch: model.init_from={src} has vocab_size {config.vocab_size} and pad id "
            f"{config.pad_token_id} but {tokenizer_source} has {vocab_size} and {pad_id}; build the shards "
            f"with that checkpoint's tokenizer (mlm-data build --tokenizer {src}) or start from scratch"
        )
    config.hidden_dropout_prob = model_cfg.dropout
    config.attention_probs_dropout_prob = model_cfg.attention_dropout
    source = RobertaForMaskedLM.from_pretrained(
        src, config=config, attn_implementation=model_cfg.attn_implementation
    )
    model = RobertaMLMPretrainingModel(source.config, document_isolation=model_cfg.document_isolation)
    model.load_state_dict(source.state_dict(), strict=True)
    return model
