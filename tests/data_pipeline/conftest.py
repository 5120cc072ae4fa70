"""Shared data-pipeline fixtures: a small real-text corpus, the same text in every input format, and
tokenizers trained on it. Session-scoped: each is built once, on first use."""

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import expand_inputs, iter_documents
from data_pipeline.samples.corpus import write_sample_corpus
from data_pipeline.tokenizer.load import LoadedTokenizer, load_tokenizer, train_tokenizer

SAMPLE_CORPUS_BYTES = 400_000
SMALL_VOCAB_SIZE = 1000
MIXED_FORMAT_DOCUMENTS = 20  # per file
ZH_VOCAB_SIZE = 1200


@pytest.fixture(scope="session")
def sample_corpus_dir(tmp_path_factory) -> str:
    """A directory of sample-*.txt files (~400 KB of stdlib docstrings, blank-line separated documents)."""
    out_dir = str(tmp_path_factory.mktemp("sample_corpus"))
    write_sample_corpus(out_dir, max_bytes=SAMPLE_CORPUS_BYTES)
    return out_dir


@pytest.fixture(scope="session")
def sample_documents(sample_corpus_dir) -> list[str]:
    """The raw documents of `sample_corpus_dir`, in order."""
    report = BuildReport()
    return [d.text for s in expand_inputs([sample_corpus_dir]) for d in iter_documents(s, report)]


@pytest.fixture(scope="session")
def mixed_format_dir(sample_documents, tmp_path_factory) -> str:
    """Consecutive slices of the sample documents as a.txt.gz, b.jsonl.zst and c.parquet (20 each)."""
    out_dir = tmp_path_factory.mktemp("mixed_formats")
    n = MIXED_FORMAT_DOCUMENTS
    with gzip.open(out_dir / "a.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n\n".join(sample_documents[:n]))
    lines = "".join(
        json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sample_documents[n : 2 * n])
    )
    (out_dir / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(
        pa.table({"text": pa.array(sample_documents[2 * n : 3 * n], pa.string())}),
        out_dir / "c.parquet",
        row_group_size=16,
    )
    assert sorted(os.listdir(out_dir)) == ["a.txt.gz", "b.jsonl.zst", "c.parquet"]
    return str(out_dir)


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


@pytest.fixture(scope="session")
def unigram_tokenizer_dir(sample_corpus_dir, tmp_path_factory) -> str:
    """A SentencePiece unigram tokenizer (vocab 800, cased) trained on `sample_corpus_dir`."""
    out_dir = str(tmp_path_factory.mktemp("tokenizers") / "unigram")
    train_tokenizer([sample_corpus_dir], "sentencepiece-unigram", 800, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(sample_corpus_dir, tmp_path_factory) -> str:
    """A SentencePiece BPE tokenizer (vocab 800, lowercased) trained on `sample_corpus_dir`."""
    out_dir = str(tmp_path_factory.mktemp("tokenizers") / "bpe")
    train_tokenizer([sample_corpus_dir], "sentencepiece-bpe", 800, out_dir, lowercase=True)
    return out_dir


@pytest.fixture(scope="session")
def byte_level_bpe_dir(sample_corpus_dir, tmp_path_factory) -> str:
    """RoBERTa's byte-level BPE (`--kind bpe`, vocab 1000) trained on `sample_corpus_dir`."""
    out_dir = str(tmp_path_factory.mktemp("tokenizers") / "byte-level-bpe")
    train_tokenizer([sample_corpus_dir], "bpe", SMALL_VOCAB_SIZE, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def zh_tokenizer_dirs(tmp_path_factory) -> dict[str, str]:
    """kind -> tokenizer dir: WordPiece and SentencePiece unigram (vocabulary 1200) trained on the Chinese
    fixture (fixtures/zh_manpages.txt)."""
    fixture = Path(__file__).parent / "fixtures" / "zh_manpages.txt"
    root = tmp_path_factory.mktemp("zh_tokenizers")
    for kind in ("wordpiece", "sentencepiece-unigram"):
        train_tokenizer([str(fixture)], kind, ZH_VOCAB_SIZE, str(root / kind))
    return {kind: str(root / kind) for kind in ("wordpiece", "sentencepiece-unigram")}
