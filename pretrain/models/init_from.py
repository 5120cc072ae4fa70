"""`model.init_from`, continued pretraining from a Hugging Face checkpoint dir: the checks every
architecture that takes one applies before it loads any weight (its own vocabulary and weight checks stay
in its model module)."""

from __future__ import annotations

import os

from pretrain.errors import ConfigError


def init_from_config(src: str, config_class, name: str):
    """The `transformers` config of the checkpoint dir `src` (model.init_from), read with `config_class`
    (BertConfig, RobertaConfig, ...; `name` says which in errors: "BERT"). Raises ConfigError naming `src`
    when it has no config.json, the file does not read, or its model_type is not `config_class`'s."""
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ConfigError(
            f"model.init_from={src}: no config.json there; expected a Hugging Face {name} checkpoint dir"
        )
    try:
        config = config_class.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.init_from={src}: cannot read its config.json: {exc}") from None
    found, expected = config.model_type, config_class.model_type
    if found != expected:
        raise ConfigError(f"model.init_from={src}: model_type is {found!r}, expected {expected!r}")
    return config
