"""The `model` section of `model.arch: modernbert`: the ModernBERT encoder's shape, presets and options.

Torch-free: the config loader (and through it the launcher) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pretrain.errors import require
from pretrain.models.model_section import SHAPE_FIELDS, PresetShape

PresetName = Literal["tiny", "mini", "small", "base", "large"]
# The one place ModernBERT's sizes live. base and large are the published ModernBERT shapes (Warner et al.
# 2024); the small ones keep base's GLU width of 1.5 x hidden and its head width of 64.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 4, "hidden_size": 128, "num_heads": 2, "intermediate_size": 192},
    "mini": {"num_layers": 6, "hidden_size": 256, "num_heads": 4, "intermediate_size": 384},
    "small": {"num_layers": 12, "hidden_size": 384, "num_heads": 6, "intermediate_size": 576},
    "base": {"num_layers": 22, "hidden_size": 768, "num_heads": 12, "intermediate_size": 1152},
    "large": {"num_layers": 28, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 2624},
}
ATTENTION_BACKENDS = ("auto", "sdpa", "varlen", "flex", "flash")


@dataclass
class ModernBertModelConfig(PresetShape):
    """The ModernBERT encoder: rotary positions, GeGLU, pre-norm, alternating global and local attention,
    and documents that never attend to each other within a packed row. `preset` fills every shape field
    left unset; without it the four shape keys must all be set.
    """

    PRESETS: ClassVar[dict[str, dict[str, int]]] = PRESETS

    arch: Literal["modernbert"] = "modernbert"
    """The architecture: ModernBERT (exports as transformers' ModernBertForMaskedLM; MLM only, no NSP/SOP)."""
    preset: PresetName | None = None
    """Named size (the presets table below); explicit shape fields override it."""
    hidden_size: int | None = None
    """Width of the hidden states."""
    num_layers: int | None = None
    """Number of transformer layers."""
    num_heads: int | None = None
    """Attention heads per layer; must divide hidden_size (ModernBERT: head width 64)."""
    intermediate_size: int | None = None
    """Width of the GeGLU feed-forward layer (its input projection is twice as wide: value and gate)."""
    max_position_embeddings: int = 8192
    """The longest row the model takes (rotary positions have no table; this is the export's limit)."""
    global_attn_every_n_layers: int = 3
    """Layer i attends globally when i % n == 0, otherwise within the local window (ModernBERT: 3)."""
    local_attention: int = 128
    """Width of the local window: a token of a local layer sees local_attention // 2 tokens each side."""
    global_rope_theta: float = 160000.0
    """Rotary base of the global layers (ModernBERT: 160k; 10k before its context extension)."""
    local_rope_theta: float = 10000.0
    """Rotary base of the local layers."""
    bias: bool = False
    """Biases in the linear layers and norms (ModernBERT: none; the decoder always has one)."""
    norm_eps: float = 1e-5
    """Epsilon of the LayerNorms."""
    embedding_dropout: float = 0.0
    """Dropout after the embedding norm (ModernBERT pretrains without dropout)."""
    mlp_dropout: float = 0.0
    """Dropout inside the GeGLU layer, before its output projection."""
    attention_backend: Literal["auto", "sdpa", "varlen", "flex", "flash"] = "auto"
    """Attention kernel, chosen at the first forward and logged once: sdpa (masked SDPA, the reference:
    runs everywhere, computes the padding), varlen (PyTorch's varlen attention on the unpadded tokens; CUDA,
    bf16/fp16), flex (FlexAttention with a document block mask; CUDA), flash (flash-attn's varlen kernel,
    if installed; CUDA, bf16/fp16). auto: flash, then varlen, then flex on CUDA as they can run; sdpa on
    CPU. A forced one that cannot run here is refused saying why."""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile each encoder layer: true (YAML's on), false (off), or auto (on when training on CUDA)."""
    pad_vocab_to_multiple_of: int = 1
    """Round the embedding and output rows up to a multiple of this (64 on GPUs, as ModernBERT's 50368).
    The extra rows are never an input id; the export keeps them. 1: no padding."""

    def __post_init__(self) -> None:
        self.fill_shape_from_preset()
        self.require_shape_set()
        for name in (
            *SHAPE_FIELDS,
            "max_position_embeddings",
            "global_attn_every_n_layers",
            "local_attention",
        ):
            value = getattr(self, name)
            require(value > 0, f"model.{name} must be > 0, got {value}")
        require(
            self.hidden_size % self.num_heads == 0 and (self.hidden_size // self.num_heads) % 2 == 0,
            f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads}) "
            "into an even head width (rotary positions rotate pairs of dimensions)",
        )
        require(
            self.local_attention % 2 == 0,
            f"model.local_attention must be even (a window of local_attention // 2 each side), "
            f"got {self.local_attention}",
        )
        for name in ("global_rope_theta", "local_rope_theta", "norm_eps"):
            require(getattr(self, name) > 0, f"model.{name} must be > 0, got {getattr(self, name)}")
        for name in ("embedding_dropout", "mlp_dropout"):
            require(0.0 <= getattr(self, name) < 1.0, f"model.{name} must be in [0, 1)")
        self.require_vocab_multiple()

    def layer_types(self) -> list[str]:
        """Each layer's attention as transformers names it: full_attention (global) or sliding_attention."""
        n = self.global_attn_every_n_layers
        return ["sliding_attention" if i % n else "full_attention" for i in range(self.num_layers)]
