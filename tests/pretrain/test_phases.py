"""A run's phases opened before the first step (pretrain/phases.py): rows one model cannot train after
phase 0's, or a sequence length they do not hold, are refused naming the phase; the stream seeds."""

from __future__ import annotations

import pytest

from data_pipeline.shards import ShardReader
from pretrain.config import ConfigError, config_from_dict
from pretrain.models.registry import build_model
from pretrain.phases import RunPhases, stream_seed


def phases_of(shards, phase: dict) -> RunPhases:
    cfg = config_from_dict(
        {"run_dir": "r", "data": {"path": str(shards)}, "model": {"preset": "tiny"}, "phases": [phase]}
    )
    sources = (ShardReader(str(shards), "train"), ShardReader(str(shards), "validation"))
    model = build_model(cfg.model, vocab_size=sources[0].vocab_size, pad_id=0, rows_have_pairs=False)
    return RunPhases(cfg, sources, model)


def test_a_phase_on_rows_of_another_mode_is_refused_naming_it(tiny_shards, tiny_nsp_shards):
    with pytest.raises(ConfigError, match=r"phases\[0\]: .* hold sentence pairs \(nsp/sop\) but phase 0's"):
        phases_of(tiny_shards, {"start_step": 10, "data": {"path": str(tiny_nsp_shards)}})


def test_a_phase_seq_len_longer_than_its_rows_is_refused_naming_it(tiny_shards):
    with pytest.raises(ConfigError, match=r"phases\[0\]: data.seq_len=128 but .* rows of 64 tokens"):
        phases_of(tiny_shards, {"start_step": 10, "data": {"seq_len": 128}})


def test_phases_record_a_digest_each_and_keep_stream_zero_on_the_seed(tiny_shards):
    phases = phases_of(tiny_shards, {"start_step": 10, "data": {"seq_len": 32}})
    assert phases.seq_lens == [64, 32] and phases.streams == [0, 1]
    assert phases.identity({"a": 1}, 0) == {"a": 1, "phases": []}
    assert phases.identity({"a": 1}, 1) == {"a": 1, "phases": phases.digests}
    assert stream_seed(7, 0) == 7 and stream_seed(7, 1) not in (7, stream_seed(7, 2), stream_seed(8, 1))
