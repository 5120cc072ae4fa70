"""BERT's pretraining model: the `transformers` BERT encoder plus a sparse MLM head and an optional NSP/SOP
head (the `PretrainingModel` of `model.arch: bert`, pretrain/models/architecture.py).

Parameter names equal those of `BertForPreTraining` (with a pair head) or `BertForMaskedLM` (without),
so `model.state_dict()` loads into those classes with `strict=True` and export is a plain save. The MLM
head runs the transform and the vocabulary projection only on the masked positions (about 15% of the
tokens), which saves most of the head's FLOPs and memory against the dense HF head.

With `model.document_isolation`, the encoder takes the collator's document keys instead of the padding
mask: the reference block-diagonal mask (pretrain/models/document_mask.py) as the 4-D boolean mask
transformers passes on unchanged to SDPA, and positions that restart at each document.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertForPreTraining,
    BertModel,
    BertOnlyMLMHead,
    BertPreTrainedModel,
    BertPreTrainingHeads,
)

from pretrain.errors import ConfigError
from pretrain.models.architecture import encoder_shape
from pretrain.models.bert.config import BertModelConfig
from pretrain.models.document_mask import document_attention_mask
from pretrain.models.init_from import init_from_config
from pretrain.models.model_section import SHAPE_FIELDS
from pretrain.models.outputs import PretrainingOutput, pretraining_output


class MLMPretrainingModel(BertPreTrainedModel):
    """BERT encoder + sparse MLM head (+ NSP/SOP head when `pair_head`). Build it with `build_model`."""

    # Same ties as BertForPreTraining / BertForMaskedLM: the decoder shares the word embeddings.
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: BertConfig, pair_head: bool, document_isolation: bool = False) -> None:
        """Randomly initialised model for `config`; `pair_head` adds the pooler and the 2-way pair head;
        `document_isolation` keeps attention and positions inside each packed document."""
        super().__init__(config)
        self.has_pair_head = pair_head
        self.document_isolation = document_isolation
        config.architectures = [self.export_class_name]  # what AutoModel picks when the export is loaded
        self.bert = BertModel(config, add_pooling_layer=pair_head)
        self.cls = BertPreTrainingHeads(config) if pair_head else BertOnlyMLMHead(config)
        self.post_init()

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The collated batch keys `forward` takes: pair labels only with a pair head; with document
        isolation the document ids and positions in place of the padding mask (their mask covers it)."""
        if self.document_isolation:
            keys = ("input_ids", "document_ids", "position_ids", "token_type_ids")
        else:
            keys = ("input_ids", "attention_mask", "token_type_ids")
        keys = (*keys, "masked_positions", "masked_labels")
        return (*keys, "pair_labels") if self.has_pair_head else keys

    @property
    def max_positions(self) -> int:
        """The longest row the model takes (its learned position table)."""
        return self.config.max_position_embeddings

    def shape(self) -> dict:
        """What the run identity records of the model (see PretrainingModel.shape)."""
        return {
            **encoder_shape(self.config),
            "max_position_embeddings": self.config.max_position_embeddings,
            "pair_head": bool(self.has_pair_head),
            # Only when on, so the identity of every run from before the option is unchanged.
            **({"document_isolation": True} if self.document_isolation else {}),
        }

    @property
    def hf_config(self) -> BertConfig:
        """The `transformers.BertConfig` to export with the weights."""
        return self.config

    @property
    def export_class_name(self) -> str:
        """The HF class our state dict loads into: BertForPreTraining (pair head) or BertForMaskedLM."""
        return "BertForPreTraining" if self.has_pair_head else "BertForMaskedLM"

    def get_output_embeddings(self):
        """The MLM decoder (tied to the input embeddings)."""
        return self.cls.predictions.decoder

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        """The encoder's output (`last_hidden_state` (batch, seq, hidden), `pooler_output` with a pair head).

        With `document_ids` (batch, seq; 0 on padding, pretrain/data/documents.py) a token attends only
        its own document (the padding mask is part of that mask, so attention_mask is not needed), and
        `position_ids` (batch, seq) give its learned position; without them, attention_mask (batch, seq)
        or None (no padding) and positions 0.. of the row, as in plain BERT.
        """
        if document_ids is not None:
            attention_mask = document_attention_mask(document_ids)
            if self.config._attn_implementation == "eager":  # eager adds the mask to the scores
                dtype = self.bert.embeddings.word_embeddings.weight.dtype
                blocked = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
                attention_mask = blocked.masked_fill_(~attention_mask, torch.finfo(dtype).min)
        return self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        masked_labels: torch.Tensor | None = None,
        pair_labels: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """Losses and accuracies of one micro-batch.

        Takes input_ids / token_type_ids of shape (batch, seq), attention_mask (batch, seq) or None when
        no row of the batch is padded (the collator leaves it out then: transformers' SDPA path would
        check `mask.all()` on the host and drop an all-ones mask anyway, masking_utils.py), masked_positions
        (flat int64 indices into batch*seq) with their original token ids masked_labels (both required),
        optionally pair_labels (batch,) and, with document isolation, document_ids and position_ids
        (`encode`). Returns a PretrainingOutput of sums and counts. Raises TypeError without
        masked_positions or masked_labels.
        """
        if masked_positions is None or masked_labels is None:
            raise TypeError("forward() needs masked_positions and masked_labels")
        encoded = self.encode(input_ids, attention_mask, token_type_ids, document_ids, position_ids)
        hidden = encoded.last_hidden_state
        masked_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
        logits = self.cls.predictions(masked_hidden).float()
        pair_logits = None
        if self.has_pair_head and pair_labels is not None:
            pair_logits = self.cls.seq_relationship(encoded.pooler_output).float()
        return pretraining_output(logits, masked_labels, pair_logits, pair_labels)

    def count_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int, masked_fraction: float = 0.15) -> float:
        """Training FLOPs (forward + backward) per input token, for MFU.

        = 6 x N_encoder (matmul params of the layers, applied to every token)
        + 12 x layers x hidden x seq_len (attention scores QK^T and the weighted sum AV: 2 matmuls of
          2 x hidden x seq_len FLOPs per token forward, x3 for forward + backward)
        + masked_fraction x 6 x N_head (transform dense + vocabulary projection hidden x vocab, applied
          only at masked positions). Embedding lookups, LayerNorm and softmax are not counted.
        """
        c = self.config
        n_encoder = sum(p.numel() for p in self.bert.encoder.parameters())
        n_head = (
            sum(p.numel() for p in self.cls.predictions.transform.parameters()) + c.hidden_size * c.vocab_size
        )
        attention = 12 * c.num_hidden_layers * c.hidden_size * seq_len
        return 6 * n_encoder + attention + masked_fraction * 6 * n_head


def _bert_config(model_cfg: BertModelConfig, vocab_size: int, pad_id: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        intermediate_size=model_cfg.intermediate_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        hidden_dropout_prob=model_cfg.dropout,
        attention_probs_dropout_prob=model_cfg.attention_dropout,
        pad_token_id=pad_id,
        type_vocab_size=2,
    )


def build_model(
    model_cfg: BertModelConfig,
    *,
    vocab_size: int,
    pad_id: int,
    rows_have_pairs: bool,
    tokenizer_source: str = "the shards' tokenizer",
) -> MLMPretrainingModel:
    """Build the model from scratch, or from the HF BERT checkpoint dir `model_cfg.init_from`.

    vocab_size / pad_id come from the shards' tokenizer (named by `tokenizer_source` in errors); the
    NSP/SOP head is added when the rows hold sentence pairs (`rows_have_pairs`) and model.pair_head is
    auto. With init_from, the checkpoint's config sets the shape (dropouts and attention
    kernel come from model_cfg); heads missing from it are freshly initialised. Raises ConfigError when
    init_from is not a BERT checkpoint dir or its vocabulary size differs from vocab_size.
    """
    pair_head = rows_have_pairs and model_cfg.pair_head == "auto"
    isolation = model_cfg.document_isolation
    if isolation and rows_have_pairs:
        raise ConfigError(
            "model.document_isolation=true but the shards (data.path) hold NSP/SOP sentence pairs, whose "
            "two segments must attend each other (a pair row is one document); set "
            "model.document_isolation=false or build full-sentences shards (mlm-data build --mode "
            "full-sentences)"
        )
    padded = model_cfg.padded_vocab_size(vocab_size)
    if model_cfg.init_from is None:
        config = _bert_config(model_cfg, padded, pad_id)
        config._attn_implementation = model_cfg.attn_implementation
        return MLMPretrainingModel(config, pair_head=pair_head, document_isolation=isolation)

    src = model_cfg.init_from
    config = init_from_config(src, BertConfig, "BERT")
    if config.vocab_size not in (vocab_size, padded):  # a padded export continues with its padding
        also = f" (padded to {padded} by model.pad_vocab_to_multiple_of)" if padded != vocab_size else ""
        raise ConfigError(
            f"vocabulary mismatch: model.init_from={src} has vocab_size {config.vocab_size} but "
            f"{tokenizer_source} has {vocab_size}{also}; build the shards with that checkpoint's tokenizer "
            f"(mlm-data build --tokenizer {src}) or start from scratch"
        )
    config.hidden_dropout_prob = model_cfg.dropout
    config.attention_probs_dropout_prob = model_cfg.attention_dropout
    # BertForPreTraining holds every parameter we may have; whatever the checkpoint lacks it initialises.
    source = BertForPreTraining.from_pretrained(
        src, config=config, attn_implementation=model_cfg.attn_implementation
    )
    model = MLMPretrainingModel(source.config, pair_head=pair_head, document_isolation=isolation)
    wanted = model.state_dict().keys()
    model.load_state_dict({k: v for k, v in source.state_dict().items() if k in wanted}, strict=True)
    return model


def hf_config_from_identity(model_cfg: BertModelConfig, identity: dict, *, pad_id: int) -> BertConfig:
    """The HF config of a checkpoint written before checkpoints held theirs (hf_config.json): rebuilt from
    the run's model section, the shape its record names (`identity`, the "model.*" keys) and the
    tokenizer's pad id.

    Raises ConfigError when the recorded shape is incomplete or invalid.
    """
    try:
        shape = {name: identity[f"model.{name}"] for name in (*SHAPE_FIELDS, "max_position_embeddings")}
        vocab_size, pair_head = identity["model.vocab_size"], bool(identity["model.pair_head"])
    except KeyError as e:
        raise ConfigError(f"the checkpoint record's model shape lacks {e}") from None
    # Document isolation changes no weight and no HF config key: the export is a plain BERT either way.
    cfg = dataclasses.replace(
        model_cfg, preset=None, init_from=None, pair_head="auto", document_isolation=False, **shape
    )
    with torch.device("meta"):  # shapes only: the weights come from the checkpoint
        return build_model(cfg, vocab_size=vocab_size, pad_id=pad_id, rows_have_pairs=pair_head).hf_config
