"""The one list of model architectures: `model.arch` -> its `Architecture`.

Adding an architecture is a folder beside `bert/` (its config section and its model) plus one line here.
Torch-free: the config loader reads the config sections from here.
"""

from __future__ import annotations

from pretrain.errors import ConfigError
from pretrain.models.architecture import Architecture
from pretrain.models.bert.config import BertModelConfig
from pretrain.models.modernbert.config import ModernBertModelConfig
from pretrain.models.roberta.config import RobertaModelConfig

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(
        "bert",
        BertModelConfig,
        "pretrain.models.bert.model",
        hf_model_type="bert",
        export_classes=("BertForMaskedLM", "BertForPreTraining"),
    ),
    "roberta": Architecture(
        "roberta",
        RobertaModelConfig,
        "pretrain.models.roberta.model",
        hf_model_type="roberta",
        export_classes=("RobertaForMaskedLM",),
    ),
    "modernbert": Architecture(
        "modernbert",
        ModernBertModelConfig,
        "pretrain.models.modernbert.model",
        hf_model_type="modernbert",
        export_classes=("ModernBertForMaskedLM",),
    ),
}
DEFAULT_ARCH = "bert"
# The `model` config section of each architecture, for the config loader.
MODEL_SECTIONS: dict[str, type] = {name: arch.config_class for name, arch in ARCHITECTURES.items()}


def get_architecture(name: str) -> Architecture:
    """The registry entry of `model.arch` = `name`; raises ConfigError naming the known ones."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_model(model_cfg, **kwargs):
    """The pretraining model of `model_cfg` (a `model` section), built by the architecture its `arch` names.

    Keywords: vocab_size and pad_id (of the shards' tokenizer), rows_have_pairs (the rows hold NSP/SOP
    sentence pairs: an architecture with a pair head may train them, one without refuses) and optionally
    tokenizer_source (names that tokenizer in errors). Returns a PretrainingModel
    (pretrain/models/architecture.py); raises ConfigError for a model it cannot build.
    """
    return get_architecture(model_cfg.arch).build_model(model_cfg, **kwargs)
