"""The run identity tells the rows' content apart (issue 20, item 4): a corpus edited keeping its size and
rebuilt with --overwrite has the same build identity but other shards, and a resume onto it is refused by
name unless train.resume_allow_changed=[data]; a record written before the content key existed still
resumes, with a warning; re-merging the same partitions gives the same content."""

from __future__ import annotations

import logging

import pytest

from pretrain.checkpoint.identity import check_resume_identity, run_identity
from pretrain.checkpoint.record import CheckpointError
from tests.helpers.runs import mlm_data


class Model:  # run_identity reads the built model's shape
    def shape(self):
        return {"vocab_size": 2000, "hidden_size": 128}


def _build(corpus, tokenizer, out, *extra) -> str:
    args = ["--input", str(corpus), "--tokenizer", str(tokenizer), "--out", str(out), "--seq-len", "64"]
    mlm_data("build", *args, "--workers", "1", *extra)
    return str(out)


def _identity(shards: str) -> dict:
    from data_pipeline.shards import ShardReader

    return run_identity("bert", Model(), ShardReader(shards), seq_len=64, seed=0)


@pytest.fixture()
def small_corpus(tiny_corpus_and_tokenizer, tmp_path):
    corpus, tokenizer = tiny_corpus_and_tokenizer
    text = b"".join(p.read_bytes() for p in sorted(corpus.rglob("*.txt")))[:200_000]
    lines = text.splitlines(keepends=True)
    out = tmp_path / "corpus"
    out.mkdir()
    for i in range(4):  # four files, so that two partitions each get some
        (out / f"{i}.txt").write_bytes(b"".join(lines[i::4]))
    return out, tokenizer


def test_resume_onto_a_same_size_edit_rebuilt_with_overwrite_is_refused(small_corpus, tmp_path, caplog):
    corpus, tokenizer = small_corpus
    shards = _build(corpus, tokenizer, tmp_path / "shards")
    before = _identity(shards)
    edited = sorted(corpus.iterdir())[0]
    text = edited.read_bytes()
    swapped = text.replace(b"the ", b"THE ")  # same size, other tokens
    assert swapped != text and len(swapped) == len(text)
    edited.write_bytes(swapped)
    _build(corpus, tokenizer, tmp_path / "shards", "--overwrite")
    after = _identity(shards)
    assert before["data"] == after["data"]  # the build identity cannot see it
    assert before["data.content"] != after["data.content"]
    with pytest.raises(CheckpointError, match=r"data \(shard contents\) .* -> .*allow_changed=\[data\]"):
        check_resume_identity("ckpt", before, after, allowed=())
    accepted = check_resume_identity("ckpt", before, after, allowed=("data",))
    assert len(accepted) == 1 and accepted[0].startswith("data (shard contents)")

    old_record = {k: v for k, v in before.items() if k != "data.content"}  # saved before the key existed
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint.identity"):
        assert check_resume_identity("ckpt", old_record, after, allowed=()) == []
    assert "records no data.content" in caplog.text


def test_remerging_the_same_partitions_keeps_the_content_identity(small_corpus, tmp_path):
    corpus, tokenizer = small_corpus
    parts = [
        _build(corpus, tokenizer, tmp_path / f"p{i}", "--num-partitions", "2", "--partition-index", str(i))
        for i in range(2)
    ]
    mlm_data("merge", *parts, "--out", str(tmp_path / "merged"))
    mlm_data("merge", *parts[::-1], "--out", str(tmp_path / "merged-again"))
    merged, again = _identity(str(tmp_path / "merged")), _identity(str(tmp_path / "merged-again"))
    assert merged == again  # data.path is not part of the identity; the shards are the same, in order
    assert check_resume_identity("ckpt", merged, again, allowed=()) == []
