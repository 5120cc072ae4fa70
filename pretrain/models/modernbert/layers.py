"""ModernBERT's building blocks, with transformers' `ModernBertForMaskedLM` names (model.py assembles them):
rotary positions, the embeddings, the GeGLU MLP, attention inside each document through a backend of
pretrain/models/attention.py, the pre-norm layer, the encoder and the MLM head's transform.

Every block takes either layout: padded (batch, seq, hidden) or unpadded (tokens, hidden); only the
attention kernel tells them apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ModernBertConfig

from pretrain.models.attention import BACKENDS, AttentionBackend


def _norm(config: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos and sin of the rotary angles of `positions` (any shape), shaped (*positions.shape, 1,
    head_dim) to broadcast over heads. Computed from theta each forward, not kept as a buffer: a bf16 run
    casts buffers to bf16, and bf16 frequencies would move the angles of far positions."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    freqs = positions[..., None].float() / (theta**exponents)
    angles = torch.cat((freqs, freqs), dim=-1)[..., None, :]
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions on x (..., heads, head_dim), in fp32 as transformers' ModernBERT does."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class ModernBertEmbeddings(nn.Module):
    """Token embeddings, their norm and dropout (no position table: positions are rotary)."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.norm = _norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class GeGLU(nn.Module):
    """The MLP: Wi projects to value and gate, GELU(value) * gate, Wo projects back."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(F.gelu(value) * gate))


class DocumentAttention(nn.Module):
    """Self-attention inside each document: fused QKV, rotary q and k, the backend's kernel, Wo.

    Takes x in either layout ((batch, seq, hidden) for a padded backend, (tokens, hidden) for an unpadded
    one): every step but the kernel is the same for both.
    """

    def __init__(self, config: ModernBertConfig, window: int | None) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.window = window
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
        self.backend: AttentionBackend = BACKENDS["sdpa"]

    def forward(self, x, cos, sin, mask, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        q, k, v = self.Wqkv(x).view(*x.shape[:-1], 3, self.num_heads, self.head_dim).unbind(dim=-3)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = self.backend.attend(
            q, k, v, mask=mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, window=self.window
        )
        return self.Wo(out.reshape(x.shape))


class ModernBertEncoderLayer(nn.Module):
    """Pre-norm attention then pre-norm GeGLU, each added to the residual (layer 0's attention takes the
    embedding norm's output: it has no norm of its own, as in ModernBERT)."""

    def __init__(self, config: ModernBertConfig, index: int) -> None:
        super().__init__()
        self.attention_type = config.layer_types[index]
        window = config.local_attention if self.attention_type == "sliding_attention" else None
        self.attn_norm = nn.Identity() if index == 0 else _norm(config)
        self.attn = DocumentAttention(config, window)
        self.mlp_norm = _norm(config)
        self.mlp = GeGLU(config)

    def forward(self, hidden, cos, sin, mask, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        hidden = hidden + self.attn(self.attn_norm(hidden), cos, sin, mask, cu_seqlens, max_seqlen)
        return hidden + self.mlp(self.mlp_norm(hidden))


class ModernBertEncoder(nn.Module):
    """Embeddings, the layers and the final norm (transformers' `ModernBertModel`, our `model.`)."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.embeddings = ModernBertEmbeddings(config)
        self.layers = nn.ModuleList(
            ModernBertEncoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.final_norm = _norm(config)


class ModernBertPredictionHead(nn.Module):
    """The MLM head's transform: dense, GELU, norm."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.norm = _norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))
