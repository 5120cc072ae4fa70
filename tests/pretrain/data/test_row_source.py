"""The row source seam: the shards reader and the in-memory test source both satisfy it, and the
sequence length a run trains on is checked against the source and the model."""

import numpy as np
import pytest

from data_pipeline.shards import ShardReader
from data_pipeline.shards.manifest import Manifest
from pretrain.config import ConfigError, DataConfig
from pretrain.data.row_source import RowSource, check_document_starts, open_row_sources, resolve_seq_len
from tests.helpers.rows import ArrayReader, make_rows


def test_the_shards_reader_is_a_row_source_with_the_manifests_facts(tiny_shards):
    train, validation = open_row_sources(DataConfig(path=str(tiny_shards)), seed=0)
    manifest = Manifest.load(str(tiny_shards))
    for source, split in ((train, "train"), (validation, "validation")):
        assert isinstance(source, RowSource) and isinstance(source, ShardReader)
        assert len(source) == manifest.splits[split]["rows"]
        assert source.tokenizer_fingerprint == manifest.tokenizer["hash"]
        assert source.special_ids == manifest.tokenizer["special_ids"]
        assert source.data_identity() == manifest.data_identity()
        assert source.tokenizer_dir == str(tiny_shards / "tokenizer")
        assert not source.has_pairs and source.seq_len == manifest.seq_len
        assert source.has_document_starts  # shards of this version record where documents start
    assert isinstance(ArrayReader(make_rows(4, 16)), RowSource)
    assert not isinstance(np.zeros(3), RowSource)


def test_seq_len_beyond_the_source_or_the_model_is_refused():
    source = ArrayReader(make_rows(4, 128), name="the shards in /d/shards")
    assert resolve_seq_len(DataConfig(path="s"), source, max_positions=512) == 128
    assert resolve_seq_len(DataConfig(path="s", seq_len=64), source, max_positions=512) == 64
    with pytest.raises(ConfigError, match="data.seq_len=256 but the shards in /d/shards hold rows of 128"):
        resolve_seq_len(DataConfig(path="s", seq_len=256), source, max_positions=512)
    with pytest.raises(ConfigError, match="exceeds model.max_position_embeddings=64"):
        resolve_seq_len(DataConfig(path="s"), source, max_positions=64)


def test_a_model_taking_document_keys_is_refused_on_rows_without_document_starts():
    old = ArrayReader(make_rows(4, 16), name="the shards in /d/old-shards")
    new = ArrayReader(make_rows(4, 16, documents=True), name="the shards in /d/new-shards")
    plain_keys = ("input_ids", "attention_mask", "masked_positions")
    document_keys = ("input_ids", "document_ids", "position_ids", "masked_positions")
    check_document_starts(old, plain_keys, "bert")  # a model that attends over the whole row: fine
    check_document_starts(new, document_keys, "bert")
    assert isinstance(new, RowSource) and new.has_document_starts and not old.has_document_starts
    with pytest.raises(ConfigError) as refused:
        check_document_starts(old, document_keys, "bert")
    message = str(refused.value)
    assert "\n" not in message and "the shards in /d/old-shards" in message
    assert "document_ids, position_ids" in message and "`mlm-data build`" in message
