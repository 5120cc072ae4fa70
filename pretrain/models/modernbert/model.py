"""ModernBERT's pretraining model (the `PretrainingModel` of `model.arch: modernbert`,
pretrain/models/architecture.py): our own module, with the parameter names and shapes of transformers'
`ModernBertForMaskedLM`, so `model.state_dict()` loads into it with `strict=True` and export is a save.

Token embeddings + norm; layers of pre-norm attention (fused QKV, rotary positions with one base for the
global layers and one for the local ones) and a pre-norm GeGLU MLP; a final norm; the MLM head (dense,
GELU, norm) and the decoder tied to the embeddings, run on the masked positions only. Layer i attends
globally when i % global_attn_every_n_layers == 0, else within the local window. Documents packed into
one row never attend to each other and their positions restart at 0 (the batch's document keys,
pretrain/data/documents.py); the attention kernel is a backend (pretrain/models/attention.py) picked at
the first forward (attention_select.py) and logged once.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn
from transformers import ModernBertConfig

from pretrain.errors import ConfigError
from pretrain.models.architecture import encoder_shape
from pretrain.models.attention import BACKENDS, AttentionBackend
from pretrain.models.attention_select import DeviceFacts, device_facts, installed_kernels, select_backend
from pretrain.models.modernbert.config import ModernBertModelConfig
from pretrain.models.modernbert.layers import ModernBertEncoder, ModernBertPredictionHead, rotary_cos_sin
from pretrain.models.outputs import PretrainingOutput, pretraining_output
from pretrain.runtime.collectives import process_group_rank

log = logging.getLogger(__name__)
LAYER_TYPES = ("full_attention", "sliding_attention")
INIT_STD, INIT_CUTOFF = 0.02, 2.0  # ModernBERT's truncated-normal initialisation


class ModernBertPretrainingModel(nn.Module):
    """ModernBERT + the sparse MLM head, parameter names of ModernBertForMaskedLM. Build it with
    `build_model`."""

    has_pair_head = False
    export_class_name = "ModernBertForMaskedLM"
    # Every document key: the backend (and so which of them it reads) is picked at the first forward,
    # once the weights' device and dtype are known; the collator computes all four on the CPU for little.
    batch_keys = (
        "input_ids",
        "masked_positions",
        "masked_labels",
        "document_ids",
        "position_ids",
        "cu_seqlens",
        "unpad_indices",
    )

    def __init__(self, config: ModernBertConfig, attention_backend: str = "auto") -> None:
        """Randomly initialised model for `config`; `attention_backend` is model.attention_backend."""
        super().__init__()
        self.config = config
        self.requested_backend = attention_backend
        self.backend: AttentionBackend | None = None
        self.model = ModernBertEncoder(config)
        self.head = ModernBertPredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.thetas = {t: config.rope_parameters[t]["rope_theta"] for t in LAYER_TYPES}
        self._initialise()

    def _initialise(self) -> None:
        """ModernBERT's init: truncated normal (cut at 2 std), std 0.02 in, 0.02 / sqrt(2 layers) for the
        projections back into the residual; zero biases, unit norms."""
        out_std = INIT_STD / math.sqrt(2.0 * self.config.num_hidden_layers)

        def init(weight: torch.Tensor, std: float) -> None:
            nn.init.trunc_normal_(weight, std=std, a=-INIT_CUTOFF * std, b=INIT_CUTOFF * std)

        init(self.model.embeddings.tok_embeddings.weight, INIT_STD)
        for layer in self.model.layers:
            init(layer.attn.Wqkv.weight, INIT_STD)
            init(layer.mlp.Wi.weight, INIT_STD)
            init(layer.attn.Wo.weight, out_std)
            init(layer.mlp.Wo.weight, out_std)
        init(self.head.dense.weight, out_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def max_positions(self) -> int:
        """The longest row the model takes (model.max_position_embeddings)."""
        return self.config.max_position_embeddings

    @property
    def hf_config(self) -> ModernBertConfig:
        """The `transformers.ModernBertConfig` to export with the weights."""
        return self.config

    def shape(self) -> dict:
        """What the run identity records of the model (see PretrainingModel.shape)."""
        c = self.config
        return {
            **encoder_shape(c),
            "layer_types": ",".join(c.layer_types),
            "local_attention": c.local_attention,
            "bias": bool(c.attention_bias),
        }

    def use_backend(self, backend: AttentionBackend) -> None:
        """Run attention with `backend` from now on (what the first forward does with its choice)."""
        self.backend = backend
        for layer in self.model.layers:
            layer.attn.backend = backend

    def _choose_backend(self, weight: torch.Tensor) -> None:
        name, why = select_backend(
            self.requested_backend, device_facts(weight.device), weight.dtype, installed_kernels()
        )
        self.use_backend(BACKENDS[name])
        if process_group_rank() == 0:
            log.info("attention backend: %s (%s)", name, why)

    def encode(
        self,
        input_ids: torch.Tensor,
        document_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        unpad_indices: torch.Tensor,
    ) -> torch.Tensor:
        """The final hidden states (batch*seq or tokens, hidden) of the batch's rows, in the backend's
        layout: padded (the row-major batch*seq tokens) or, for an unpadded backend, the `unpad_indices`
        tokens only. Takes the document keys of pretrain/data/documents.py."""
        if self.backend is None:
            self._choose_backend(self.model.embeddings.tok_embeddings.weight)
        backend = self.backend
        batch, seq = input_ids.shape
        if backend.unpadded:
            ids = input_ids.reshape(-1).index_select(0, unpad_indices)
            positions = position_ids.reshape(-1).index_select(0, unpad_indices)
            masks = dict.fromkeys(LAYER_TYPES)
        else:
            ids, positions = input_ids, position_ids
            masks = {
                "full_attention": backend.prepare(document_ids, None),
                "sliding_attention": backend.prepare(document_ids, self.config.local_attention),
            }
        rotary = {t: rotary_cos_sin(positions, self.head_dim, self.thetas[t]) for t in LAYER_TYPES}
        hidden = self.model.embeddings(ids)
        for layer in self.model.layers:
            t = layer.attention_type
            hidden = layer(hidden, *rotary[t], masks[t], cu_seqlens, seq)
        hidden = self.model.final_norm(hidden)
        return hidden.reshape(-1, hidden.shape[-1])

    def row_of_positions(
        self, positions: torch.Tensor, unpad_indices: torch.Tensor, numel: int
    ) -> torch.Tensor:
        """Flat batch*seq `positions` as rows of `encode`'s output (themselves, unless the backend
        unpads); on the device, with nothing read back."""
        if self.backend is None or not self.backend.unpadded:
            return positions
        tokens = unpad_indices.shape[0]
        slot = torch.zeros(numel, dtype=torch.int64, device=unpad_indices.device)
        slot.index_copy_(0, unpad_indices, torch.arange(tokens, device=unpad_indices.device))
        return slot.index_select(0, positions)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states (..., hidden): head transform, then the tied decoder."""
        return self.decoder(self.head(hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        masked_positions: torch.Tensor | None = None,
        masked_labels: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        unpad_indices: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """Losses and accuracies of one micro-batch.

        Takes input_ids (batch, seq), masked_positions (flat int64 indices into batch*seq) with their
        original ids masked_labels, and the document keys of pretrain/data/documents.py (all required).
        Returns a PretrainingOutput of sums and counts (its pair fields zero). Raises TypeError when a key
        is missing (a collator that does not emit document keys).
        """
        given = {
            "masked_positions": masked_positions,
            "masked_labels": masked_labels,
            "document_ids": document_ids,
        }
        given |= {"position_ids": position_ids, "cu_seqlens": cu_seqlens, "unpad_indices": unpad_indices}
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise TypeError(
                f"ModernBERT's forward() needs {', '.join(missing)} (the collator's document keys)"
            )
        hidden = self.encode(input_ids, document_ids, position_ids, cu_seqlens, unpad_indices)
        rows = self.row_of_positions(masked_positions, unpad_indices, input_ids.numel())
        logits = self.logits(hidden.index_select(0, rows)).float()
        return pretraining_output(logits, masked_labels)

    def count_parameters(self) -> int:
        """Number of distinct parameters (the tied decoder weight counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int, masked_fraction: float = 0.3) -> float:
        """Training FLOPs (forward + backward) per input token, for MFU.

        = 6 x the layers' matmul parameters (applied to every token)
        + 12 x hidden x keys per layer (QK^T and AV, forward + backward): keys = seq_len in a global
          layer, min(seq_len, local_attention + 1) in a local one (what a windowed kernel computes;
          document isolation computes less still, which this does not count)
        + masked_fraction x 6 x (head dense + hidden x vocab), the head running on masked tokens only.
        Embedding lookups, norms, GELU and softmax are not counted.
        """
        c = self.config
        matmul = sum(
            m.weight.numel()
            for layer in self.model.layers
            for m in layer.modules()
            if isinstance(m, nn.Linear)
        )
        keys = {"full_attention": seq_len, "sliding_attention": min(seq_len, c.local_attention + 1)}
        attention = sum(12 * c.hidden_size * keys[t] for t in c.layer_types)
        head = c.hidden_size * c.hidden_size + c.hidden_size * c.vocab_size
        return 6 * matmul + attention + masked_fraction * 6 * head


def _hf_config(model_cfg: ModernBertModelConfig, vocab_size: int, pad_id: int) -> ModernBertConfig:
    """transformers' ModernBertConfig of the section: the keys transformers 5 reads (layer_types,
    rope_parameters per layer type, local_attention), no BOS/EOS/CLS/SEP defaults of ModernBERT's own
    vocabulary (ours comes from the shards' tokenizer)."""
    return ModernBertConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        hidden_activation="gelu",
        max_position_embeddings=model_cfg.max_position_embeddings,
        norm_eps=model_cfg.norm_eps,
        norm_bias=model_cfg.bias,
        attention_bias=model_cfg.bias,
        mlp_bias=model_cfg.bias,
        classifier_bias=model_cfg.bias,
        decoder_bias=True,
        classifier_activation="gelu",
        attention_dropout=0.0,
        embedding_dropout=model_cfg.embedding_dropout,
        mlp_dropout=model_cfg.mlp_dropout,
        layer_types=model_cfg.layer_types(),
        local_attention=model_cfg.local_attention,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": model_cfg.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": model_cfg.local_rope_theta},
        },
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=None,
        cls_token_id=None,
        sep_token_id=None,
        tie_word_embeddings=True,
        architectures=[ModernBertPretrainingModel.export_class_name],
    )


def training_device() -> DeviceFacts:
    """The device this process will train on, known before the model is moved there: CUDA when torch
    sees a GPU and DeepSpeed is not told otherwise (pretrain/runtime/distributed.py decides alike)."""
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda":
        return device_facts(torch.device("cuda", torch.cuda.current_device()))
    return DeviceFacts("cpu")


def build_model(
    model_cfg: ModernBertModelConfig,
    *,
    vocab_size: int,
    pad_id: int,
    rows_have_pairs: bool,
    tokenizer_source: str = "the shards' tokenizer",
) -> ModernBertPretrainingModel:
    """A randomly initialised ModernBERT for the shards' tokenizer (vocab_size rounded up by
    model.pad_vocab_to_multiple_of; pad_id), its layers compiled per model.compile.

    Raises ConfigError when the rows hold NSP/SOP pairs (ModernBERT has no pair head) or when a forced
    model.attention_backend cannot run on this device with the installed kernels (its dtype is checked
    at the first forward).
    """
    if rows_have_pairs:
        shards = tokenizer_source.removeprefix("the tokenizer of ")
        raise ConfigError(
            f"model.arch=modernbert has no NSP/SOP head, but the rows of {shards} hold sentence pairs; "
            "build the shards with mlm-data build --mode full-sentences"
        )
    device = training_device()
    select_backend(model_cfg.attention_backend, device, None, installed_kernels())
    config = _hf_config(model_cfg, model_cfg.padded_vocab_size(vocab_size), pad_id)
    model = ModernBertPretrainingModel(config, model_cfg.attention_backend)
    if model_cfg.compile is True or (model_cfg.compile == "auto" and device.type == "cuda"):
        for layer in model.model.layers:
            layer.compile()  # in place: parameter names (and so checkpoints and export) stay the same
    return model
