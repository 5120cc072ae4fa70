"""NSP random-next segments come from other documents of the whole build (of the partition), even with
one document per file; the label balance is about half, the same for any worker count, and a build
interrupted while pairing resumes to the same bytes."""

import os

import numpy as np
import pytest

from data_pipeline.build import nsp_pairs
from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.clean import CleanConfig, Cleaner
from data_pipeline.shards.inspect import summary
from data_pipeline.tokenizer.segment import split_sentences
from data_pipeline.shards.format import SPLITS, ShardReader
from data_pipeline.ingest.sources import Document
from data_pipeline.tokenizer.load import load_tokenizer

FILES = 40
SEQ_LEN = 48


@pytest.fixture(scope="module")
def one_document_per_file(sample_documents, tmp_path_factory) -> tuple[str, list[str]]:
    """40 files of one document each (documents of several sentences), and the documents."""
    out = tmp_path_factory.mktemp("one_document_per_file")
    docs = [d for d in sample_documents if len(split_sentences(d)) >= 4][:FILES]
    assert len(docs) == FILES
    for i, doc in enumerate(docs):
        (out / f"doc-{i:02d}.txt").write_text(doc, encoding="utf-8")
    return str(out), docs


def _build(corpus: str, tokenizer: str, out, **kw) -> str:
    cfg = BuildConfig(inputs=[corpus], tokenizer=tokenizer, out=str(out), seq_len=SEQ_LEN, mode="nsp",
                      validation_fraction=0.1, **kw)
    run_build(cfg)
    return str(out)


def _files(d: str) -> dict[str, bytes]:
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n != "tokenizer"}


def _token_text(ids) -> str:
    return "," + ",".join(map(str, ids)) + ","


def _document_streams(docs: list[str], tokenizer) -> list[str]:
    """Each document's sentence tokens one after the other, as the pairing sees them."""
    cleaner = Cleaner(CleanConfig(), BuildReport())
    streams = []
    for i, doc in enumerate(docs):
        (text,) = cleaner.clean(Document(doc, "x", i))
        streams.append(
            _token_text(np.concatenate([ids for ids, _ in tokenizer.encode_batch(split_sentences(text))]))
        )
    return streams


def _origins(segment: np.ndarray, streams: list[str]) -> set[int]:
    needle = _token_text(segment)
    return {d for d, stream in enumerate(streams) if needle in stream}


@pytest.mark.parametrize("partition", [None, 1])
def test_random_next_segments_come_from_other_documents_of_the_build(
    partition, one_document_per_file, wordpiece_tokenizer_dir, tmp_path
):
    corpus, docs = one_document_per_file
    kw = {} if partition is None else {"num_partitions": 2, "partition_index": partition}
    one = _build(corpus, wordpiece_tokenizer_dir, tmp_path / "one", workers=1, **kw)
    two = _build(corpus, wordpiece_tokenizer_dir, tmp_path / "two", workers=2, **kw)
    assert _files(one) == _files(two)
    mine = set(range(FILES)) if partition is None else {d for d in range(FILES) if d % 2 == partition}
    streams = _document_streams(docs, load_tokenizer(wordpiece_tokenizer_dir))
    info = summary(one)
    rows = ShardReader(one, "train").take(range(info["splits"]["train"]["sequences"]))
    assert info["splits"]["train"]["pair_label_1"] == int(rows["pair_label"].sum())
    share = rows["pair_label"].mean()
    assert 0.45 <= share <= 0.55, share  # one document per file: every label 1 comes from another file
    checked = 0
    for ids, b_start, length, label in zip(
        rows["input_ids"], rows["segment_b_start"], rows["length"], rows["pair_label"], strict=True
    ):
        a, b = ids[1 : b_start - 1], ids[b_start : length - 1]
        a_origins = _origins(a, streams)
        assert a_origins & mine
        if label == 1 and len(b) >= 4 and len(a_origins) == 1:
            assert _origins(b, streams) & mine - a_origins  # another document of this build (partition)
            checked += 1
    assert checked > 50


def test_an_nsp_build_interrupted_while_pairing_resumes_to_the_same_bytes(
    one_document_per_file, wordpiece_tokenizer_dir, tmp_path, monkeypatch, caplog
):
    corpus, _ = one_document_per_file
    reference = _build(corpus, wordpiece_tokenizer_dir, tmp_path / "reference", workers=1)
    calls = []
    real = nsp_pairs.pair_chunk

    def pair_then_crash(task):
        if len(calls) == 10:
            raise KeyboardInterrupt("simulated kill while pairing")
        calls.append(task)
        real(task)

    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        m.setattr(nsp_pairs, "pair_chunk", pair_then_crash)
        with pytest.raises(KeyboardInterrupt):
            _build(corpus, wordpiece_tokenizer_dir, out, workers=1)
    assert len(list((out / ".work").glob(f"*{nsp_pairs.PAIRS_SUFFIX}"))) == 10
    caplog.set_level("INFO")
    _build(corpus, wordpiece_tokenizer_dir, out, workers=1)
    assert f"resuming: {FILES} of {FILES} work units already done" in caplog.text
    assert _files(str(out)) == _files(reference)
    assert all(len(ShardReader(reference, s)) > 0 for s in SPLITS)
