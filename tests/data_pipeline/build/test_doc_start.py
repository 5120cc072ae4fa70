"""The doc_start column of a real `mlm-data build` (format 2), and shards of format 1 still read."""

import numpy as np
import pytest

from data_pipeline.build.merge import merge_parts
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
