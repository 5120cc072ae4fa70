"""The strict typed build: a section chosen by one of its keys, lists of sections, their messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest

from pretrain.config import ConfigError, config_from_dict
from pretrain.config.typed import ChosenBy, build_dataclass, describe_type
from pretrain.models.bert.config import BertModelConfig


@dataclass
class Cat:
    kind: Literal["cat"] = "cat"
    lives: int = 9


@dataclass
class Dog:
    kind: Literal["dog"] = "dog"
    good: bool = True


@dataclass
class Source:
    path: str = ""
    weight: float = 1.0


@dataclass
class House:
    pet: Annotated[Any, ChosenBy("kind", {"cat": Cat, "dog": Dog}, default="cat")] = field(
        default_factory=Cat
    )
    sources: list[Source] = field(default_factory=list)


def test_the_chosen_key_picks_the_section_and_its_keys_only():
    assert build_dataclass(House, {"pet": {"kind": "dog", "good": False}}).pet == Dog(good=False)
    assert build_dataclass(House, {"pet": {"lives": 3}}).pet == Cat(lives=3)  # the default choice
    with pytest.raises(ConfigError, match=r"^pet.kind: expected one of 'cat', 'dog', got 'cow'$"):
        build_dataclass(House, {"pet": {"kind": "cow"}})
    with pytest.raises(ConfigError, match=r"unknown key pet.lives; valid keys: kind, good"):
        build_dataclass(House, {"pet": {"kind": "dog", "lives": 9}})  # a cat's key in a dog's section


def test_a_list_of_sections_checks_every_item_by_its_index():
    house = build_dataclass(House, {"sources": [{"path": "a"}, {"path": "b", "weight": "2e-1"}]})
    assert house.sources == [Source("a", 1.0), Source("b", 0.2)]
    with pytest.raises(ConfigError, match=r"sources\[1\].weight: expected float, got 'heavy'"):
        build_dataclass(House, {"sources": [{"path": "a"}, {"path": "b", "weight": "heavy"}]})
    with pytest.raises(
        ConfigError, match=r"unknown key sources\[0\].wieght; did you mean sources\[0\].weight"
    ):
        build_dataclass(House, {"sources": [{"path": "a", "wieght": 1}]})
    with pytest.raises(ConfigError, match=r"sources: expected a list of sections, got 'a'"):
        build_dataclass(House, {"sources": "a"})
    assert describe_type(list[int]) == "a list of int"


def test_model_arch_chooses_the_model_section():
    base = {"run_dir": "r", "data": {"path": "s"}}
    assert config_from_dict(base).model == BertModelConfig(preset="base")  # no model section: BERT base
    assert config_from_dict({**base, "model": {"arch": "bert", "preset": "tiny"}}).model.num_layers == 2
    roberta = config_from_dict({**base, "model": {"arch": "roberta", "preset": "tiny"}}).model
    assert type(roberta).__name__ == "RobertaModelConfig" and roberta.num_layers == 2
    from pretrain.models.registry import ARCHITECTURES

    known = ", ".join(repr(name) for name in ARCHITECTURES)
    with pytest.raises(ConfigError, match=rf"<dict>: model.arch: expected one of {known}, got 'gpt'"):
        config_from_dict({**base, "model": {"arch": "gpt", "preset": "tiny"}})
