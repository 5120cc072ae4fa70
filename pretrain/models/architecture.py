"""What the rest of the trainer knows about a model architecture: its `Architecture` entry (registry.py)
and the `PretrainingModel` interface every architecture's model implements.

Torch-free: an entry names its torch module by import path, loaded on first use, so the config loader (and
the launcher) can list architectures and their config sections without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol


class PretrainingModel(Protocol):
    """The interface of an architecture's pretraining model (a `torch.nn.Module`).

    - `forward(**batch)` takes the keys of `batch_keys` (the collator drops any other) and returns a
      `pretrain.models.outputs.PretrainingOutput` of sums and counts;
    - `shape()` is what the run identity records of it (JSON values: vocab size, widths, heads...): a
      resume onto another shape is refused, and export rebuilds nothing from it;
    - `hf_config` is the `transformers` config saved into each checkpoint (with `architectures` naming
      `export_class_name`, the `transformers` class whose `load_state_dict(strict=True)` takes our weights);
    - `max_positions` is the longest row it takes;
    - `flops_per_token(seq_len, masked_fraction)` counts training FLOPs for MFU.
    """

    batch_keys: tuple[str, ...]
    has_pair_head: bool
    export_class_name: str
    hf_config: Any
    max_positions: int

    def shape(self) -> dict: ...

    def flops_per_token(self, seq_len: int, masked_fraction: float) -> float: ...

    def count_parameters(self) -> int: ...


def encoder_shape(hf_config) -> dict:
    """The keys every architecture's `shape()` record starts with (vocab size and the four shape keys of
    pretrain/models/model_section.py, under those names), read from its `transformers` config."""
    c = hf_config
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_layers": c.num_hidden_layers,
        "num_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
    }


@dataclass(frozen=True)
class Architecture:
    """One architecture of the registry.

    name: the value of `model.arch`; config_class: its `model` config section (a dataclass with an
    `arch` Literal field); module: the import path of its torch module, which defines
    `build_model(model_cfg, *, vocab_size, pad_id, rows_have_pairs, tokenizer_source) -> PretrainingModel` and
    optionally `hf_config_from_identity(model_cfg, identity)` (for checkpoints written before the HF
    config was saved into them); hf_model_type: the `transformers` model_type of its exports;
    export_classes: the `transformers` classes an export may be (a checkpoint naming another is refused).
    """

    name: str
    config_class: type
    module: str
    hf_model_type: str
    export_classes: tuple[str, ...]

    def implementation(self) -> ModuleType:
        """The architecture's torch module (imported on first use)."""
        return importlib.import_module(self.module)

    def build_model(self, model_cfg, **kwargs):
        """The architecture's `build_model(model_cfg, **kwargs)` (class docstring): a PretrainingModel."""
        return self.implementation().build_model(model_cfg, **kwargs)
