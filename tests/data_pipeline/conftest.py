"""Shared data-pipeline fixtures: a small real-text corpus and a WordPiece tokenizer, built once."""

import pytest

from data_pipeline.sample_corpus import write_sample_corpus
from data_pipeline.tokenizer import LoadedTokenizer, load_tokenizer, train_tokenizer

SAMPLE_CORPUS_BYTES = 400_000
SMALL_VOCAB_SIZE = 1000


@pytest.fixture(scope="session")
def sample_corpus_dir(tmp_path_factory) -> str:
    """A directory of sample-*.txt files (~400 KB of stdlib docstrings, blank-line separated documents)."""
    out_dir = str(tmp_path_factory.mktemp("sample_corpus"))
    write_sample_corpus(out_dir, max_bytes=SAMPLE_CORPUS_BYTES)
    return out_dir


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(sample_corpus_dir, tmp_path_factory) -> str:
    """A WordPiece tokenizer (vocab 1000, cased) trained on `sample_corpus_dir`, saved as an HF dir."""
    out_dir = str(tmp_path_factory.mktemp("tokenizers") / "wordpiece")
    train_tokenizer([sample_corpus_dir], "wordpiece", SMALL_VOCAB_SIZE, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def wordpiece_tokenizer(wordpiece_tokenizer_dir) -> LoadedTokenizer:
    """`wordpiece_tokenizer_dir` loaded with `load_tokenizer`."""
    return load_tokenizer(wordpiece_tokenizer_dir)
