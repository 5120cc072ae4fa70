"""docs/configuration.md's reference is the one pretrain.config.reference generates from the docstrings."""

from __future__ import annotations

import dataclasses

from pretrain.config.reference import MARKER, PAGE, field_docs, page_with_reference
from pretrain.config.sections import TrainConfig
from pretrain.models.registry import MODEL_SECTIONS


def test_the_page_is_what_the_docstrings_generate():
    page = PAGE.read_text(encoding="utf-8")
    assert page == page_with_reference(page), (
        "docs/configuration.md is out of date: run `python -m pretrain.config.reference`"
    )
    generated = page.partition(MARKER)[2]
    for name, section in MODEL_SECTIONS.items():  # every architecture's keys are there
        assert f"## `model` (`model.arch: {name}`)" in generated
        assert all(f"`model.{f.name}`" in generated for f in dataclasses.fields(section))


def test_every_field_has_a_docstring():
    for section in (TrainConfig, *MODEL_SECTIONS.values()):
        assert set(field_docs(section)) == {f.name for f in dataclasses.fields(section)}
