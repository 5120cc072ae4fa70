"""The doc_start column of a real `mlm-data build` (format 2), and shards of format 1 still read."""

import dataclasses
import json

import numpy as np
import pytest

from data_pipeline.build import pipeline
from data_pipeline.build.merge import merge_parts
from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.errors import DataError
from data_pipeline.shards import ShardReader
from data_pipeline.shards.inspect import DOCUMENT_MARK, decoded_samples, summary
from data_pipeline.shards.manifest import FORMAT_VERSION, Manifest
from data_pipeline.shards.verify import verify_shards
from tests.helpers.shard_formats import format_1_copy


def test_a_build_marks_the_token_after_each_sep_and_every_row_start(tiny_shards):
    manifest = Manifest.load(str(tiny_shards))
    assert manifest.format_version == FORMAT_VERSION == 2 and manifest.has_doc_start
    reader = ShardReader(str(tiny_shards))
    rows = reader.take(np.arange(len(reader)))
    sep = manifest.tokenizer["special_ids"]["sep"]
    ids, starts, lengths = rows["input_ids"], rows["doc_start"], rows["length"]
    in_row = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    # A document starts after each [SEP] (the one that ends the document before it) but the row's last
    # token, and at 0 of every row: the [CLS] opens the row's first document, or the rest of a cut one.
    after_sep = np.zeros_like(in_row)
    after_sep[:, 2:] = ids[:, 1:-1] == sep
    np.testing.assert_array_equal(starts[:, 1:] == 1, (after_sep & in_row)[:, 1:])
    assert (starts[:, 0] == 1).all() and starts[:, 1].sum() == 0
    assert (starts.sum(axis=1) > 1).sum() > 100  # rows that pack several documents
    assert summary(str(tiny_shards))["format_version"] == 2
    first = int(np.flatnonzero(starts.sum(axis=1) > 1)[0])  # the first row of two documents
    lines = decoded_samples(str(tiny_shards), first + 1)
    assert f" {DOCUMENT_MARK} " in lines[first] and DOCUMENT_MARK not in "".join(lines[:first])


def test_shards_of_format_1_read_the_same_rows_without_doc_start(tiny_shards, tmp_path):
    old = format_1_copy(tiny_shards, tmp_path / "old")
    assert verify_shards(str(old)) == []
    new_reader, old_reader = ShardReader(str(tiny_shards)), ShardReader(str(old))
    assert not old_reader.has_document_starts and len(old_reader) == len(new_reader)
    assert old_reader.data_identity() == new_reader.data_identity()  # the same build, in another format
    rows, new_rows = old_reader.take([0, 3, 7]), new_reader.take([0, 3, 7])
    assert set(new_rows) - set(rows) == {"doc_start"}
    for key, column in rows.items():
        np.testing.assert_array_equal(column, new_rows[key])
    assert summary(str(old))["format_version"] == 1
    assert not any(DOCUMENT_MARK in line for line in decoded_samples(str(old), 3))


def test_merge_refuses_parts_of_different_shard_formats(tiny_shards, tmp_path):
    old = format_1_copy(tiny_shards, tmp_path / "old")
    with pytest.raises(DataError, match=f"{old}: format_version 1 differs from {tiny_shards}'s 2"):
        merge_parts([str(tiny_shards), str(old)], str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_a_build_interrupted_by_an_older_mlm_data_tokenizes_its_chunks_again(
    sample_documents, wordpiece_tokenizer_dir, tmp_path, monkeypatch
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"part-{i}.txt").write_text("\n\n".join(sample_documents[i * 20 : i * 20 + 20]))
    cfg = BuildConfig(
        inputs=[str(corpus)], tokenizer=wordpiece_tokenizer_dir, out=str(tmp_path / "out"), seq_len=48
    )
    reference = tmp_path / "reference"
    run_build(dataclasses.replace(cfg, out=str(reference)))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("stopped after tokenizing")

    with monkeypatch.context() as patch:  # every unit tokenized, then the build stops
        patch.setattr(pipeline, "_pack", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_build(cfg)
    # What an mlm-data from before doc_start left: chunks without document lengths, stamps without the
    # chunk layout.
    work = tmp_path / "out" / ".work"
    for marker in [*work.glob("unit-*.done"), *work.glob("unit-*.start")]:
        record = json.loads(marker.read_text())
        record["stamp"].pop("chunk_layout")
        marker.write_text(json.dumps(record))
    chunks = sorted(work.glob("unit-*.npz"))
    assert chunks
    for chunk in chunks:
        with np.load(chunk) as data:
            kept = {k: data[k] for k in data.files if not k.endswith("/doc_tokens")}
        np.savez(chunk, **kept)
    run_build(cfg)
    built, expected = ShardReader(str(tmp_path / "out")), ShardReader(str(reference))
    rows = built.take(np.arange(len(built)))
    for key, column in expected.take(np.arange(len(expected))).items():
        np.testing.assert_array_equal(rows[key], column)
