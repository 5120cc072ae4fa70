"""The architecture registry: every entry is consistent, and the rest of the trainer needs nothing else."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
import transformers

from pretrain.config import ConfigError
from pretrain.models.registry import ARCHITECTURES, build_model, get_architecture


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_an_entry_names_its_section_module_and_export_classes(name):
    arch = get_architecture(name)
    section = arch.config_class
    assert typing.get_type_hints(section)["arch"] == typing.Literal[name]
    assert dataclasses.fields(section)[0].name == "arch"  # first in the resolved config.yaml too
    assert callable(arch.implementation().build_model)
    assert all(hasattr(transformers, cls) for cls in arch.export_classes)
    assert arch.hf_model_type in transformers.models.auto.configuration_auto.CONFIG_MAPPING


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("pairs", [False, True])
def test_a_built_model_offers_what_the_trainer_uses(name, pairs):
    section = ARCHITECTURES[name].config_class
    presets = section.PRESETS
    with torch.device("meta"):
        try:
            model = build_model(
                section(preset=next(iter(presets))), vocab_size=300, pad_id=0, rows_have_pairs=pairs
            )
        except ConfigError as e:  # an architecture without a pair head refuses pair shards, in one line
            assert pairs and "NSP/SOP" in str(e) and "\n" not in str(e), e
            return
    shape = model.shape()
    assert shape["vocab_size"] == 300 and all(isinstance(v, (int, bool, str)) for v in shape.values())
    assert {"input_ids", "masked_positions", "masked_labels"} <= set(model.batch_keys)
    assert ("pair_labels" in model.batch_keys) == model.has_pair_head
    assert model.hf_config.architectures == [model.export_class_name]
    assert model.export_class_name in ARCHITECTURES[name].export_classes
    assert model.hf_config.model_type == ARCHITECTURES[name].hf_model_type
    assert model.max_positions > 0 and model.flops_per_token(64, 0.15) > 6 * model.count_parameters() * 0.01


def test_an_unknown_architecture_is_named_with_the_known_ones():
    known = ", ".join(ARCHITECTURES)  # bert first, the default
    with pytest.raises(ConfigError, match=rf"model.arch: unknown architecture 'gpt'; known: {known}$"):
        get_architecture("gpt")
