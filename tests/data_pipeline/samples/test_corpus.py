"""sample_corpus: deterministic real text, readable by sources, within the size cap."""

import os
from pathlib import Path

import pytest

from data_pipeline.errors import DataError
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import expand_inputs, iter_documents
from data_pipeline.samples.corpus import write_sample_corpus


def test_sample_corpus_is_deterministic_and_readable(tmp_path, sample_corpus_dir):
    # Two parsing processes (which parse ahead and are stopped at the cap) write what one wrote.
    stats = write_sample_corpus(str(tmp_path), max_bytes=400_000, workers=2)
    assert stats["files"] == sorted(os.listdir(tmp_path)) == sorted(os.listdir(sample_corpus_dir))
    for name in stats["files"]:
        assert (tmp_path / name).read_bytes() == Path(sample_corpus_dir, name).read_bytes()
    assert 350_000 < stats["bytes"] <= 400_000
    assert stats["bytes"] == sum(os.path.getsize(tmp_path / name) for name in stats["files"])
    report = BuildReport()
    docs = [d for s in expand_inputs([str(tmp_path)]) for d in iter_documents(s, report)]
    assert len(docs) == stats["documents"]  # blank lines separate documents and nothing else
    assert report.counts == {"files": len(stats["files"])}
    words = " ".join(d.text for d in docs).split()
    assert {"the", "Return", "function", "object"} <= set(words)  # English prose, not code


def test_size_cap_and_file_rotation(tmp_path, monkeypatch):
    from data_pipeline.samples import corpus as sample_corpus

    monkeypatch.setattr(sample_corpus, "FILE_BYTES", 20_000)
    stats = write_sample_corpus(str(tmp_path), max_bytes=70_000)
    assert len(stats["files"]) >= 3
    assert stats["files"] == [f"sample-{i:03d}.txt" for i in range(len(stats["files"]))]
    assert stats["bytes"] <= 70_000
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_refuses_to_overwrite_and_bad_cap(tmp_path):
    write_sample_corpus(str(tmp_path), max_bytes=10_000)
    with pytest.raises(DataError, match="already holds a sample corpus"):
        write_sample_corpus(str(tmp_path), max_bytes=10_000)
    with pytest.raises(DataError, match="max_bytes must be positive"):
        write_sample_corpus(str(tmp_path / "other"), max_bytes=0)
    with pytest.raises(DataError, match="workers must be >= 1"):
        write_sample_corpus(str(tmp_path / "other"), workers=0)
