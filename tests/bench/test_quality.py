"""bench/quality.py's arch comparison: the evaluator cuts its masked packed rows into single documents
(at `doc_start`) without moving a token, a mask or a label; and both sides get one model section each."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from bench import quality


def test_masked_rows_become_one_padded_row_per_document():
    inputs = np.array([[2, 11, 12, 2, 13, 14, 15, 0], [2, 21, 22, 23, 0, 0, 0, 0]])
    labels = np.full(inputs.shape, -100)
    labels[0, 4], labels[1, 2] = 99, 98  # masked positions (their inputs would be [MASK])
    doc_start = np.array([[1, 0, 0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    lengths = np.array([7, 4])
    docs = quality._one_row_per_document(inputs, labels, doc_start, lengths, SimpleNamespace(pad_token_id=0))
    assert docs["input_ids"].tolist() == [[2, 11, 12, 0], [2, 13, 14, 15], [2, 21, 22, 23]]
    assert docs["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert docs["labels"].tolist() == [[-100] * 4, [-100, 99, -100, -100], [-100, -100, 98, -100]]


def test_the_arch_comparison_trains_both_archs_of_one_preset_on_one_schedule():
    bert, modern = quality.model_section("bert", "tiny"), quality.model_section("modernbert", "tiny")
    assert (
        "arch" not in bert
        and bert["hidden_size"] == 128
        and bert["max_position_embeddings"] == quality.SEQ_LEN
    )
    assert modern == {
        "arch": "modernbert",
        "preset": "tiny",
        "max_position_embeddings": 128,
        "compile": False,
    }
    assert list(quality.SIDES["archs"].values()) == ["BERT (ours)", "ModernBERT (ours)"]
