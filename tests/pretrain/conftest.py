"""Fixtures for the pretrain tests: shard-like rows (tests/helpers/rows.py) and real WordPiece rows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.rows import make_rows


@pytest.fixture(scope="session")
def pair_rows() -> dict[str, np.ndarray]:
    return make_rows(64, 32, pairs=True)


@pytest.fixture(scope="session")
def wordpiece_rows(tiny_corpus_and_tokenizer):
    """(rows, tokenizer): real stdlib text from `mlm-data`'s sample corpus and the session's WordPiece
    tokenizer trained on it (tests/conftest.py), packed into [CLS] ... [SEP] rows of 64 tokens with the
    tokenizer's word starts."""
    from data_pipeline.tokenizer.load import load_tokenizer

    corpus, tokenizer_dir = tiny_corpus_and_tokenizer
    tokenizer = load_tokenizer(str(tokenizer_dir))
    text = (corpus / "sample-000.txt").read_text()[:200_000]  # a few thousand rows are plenty
    encoded = tokenizer.encode_batch([doc for doc in text.split("\n\n") if doc.strip()])
    ids = np.concatenate([e[0] for e in encoded]).astype(np.uint16)
    starts = np.concatenate([e[1] for e in encoded]).astype(np.uint8)
    body = 62
    n = len(ids) // body
    sp = tokenizer.special_ids
    rows = {
        "input_ids": np.full((n, 64), sp.sep, dtype=np.uint16),
        "word_start": np.ones((n, 64), dtype=np.uint8),
        "length": np.full(n, 64, dtype=np.int32),
    }
    rows["input_ids"][:, 0] = sp.cls
    rows["input_ids"][:, 1:63] = ids[: n * body].reshape(n, body)
    rows["word_start"][:, 1:63] = starts[: n * body].reshape(n, body)
    return rows, tokenizer
