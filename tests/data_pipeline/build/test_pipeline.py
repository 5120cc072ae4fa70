"""Real builds over a multi-file corpus: worker-count independence, the token stream, verify, merge."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.build import worker as build_worker

from data_pipeline.ingest import file_parts
from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.clean import CleanConfig, Cleaner
from data_pipeline.errors import DataError
from data_pipeline.shards.inspect import summary
from data_pipeline.shards.manifest import Manifest
from data_pipeline.build.merge import merge_parts
from data_pipeline.cli import main
from data_pipeline.shards.format import ShardReader
from data_pipeline.ingest.sources import Document, expand_inputs
from data_pipeline.tokenizer.load import load_tokenizer
from data_pipeline.shards.verify import verify_shards

SEQ_LEN = 48
FILES = 6


@pytest.fixture(scope="session")
def split_corpus(sample_documents, tmp_path_factory) -> str:
    """The sample documents spread over 6 .txt files (6 work units)."""
    out = tmp_path_factory.mktemp("split_corpus")
    for i, chunk in enumerate(np.array_split(np.arange(len(sample_documents)), FILES)):
        (out / f"part-{i}.txt").write_text("\n\n".join(sample_documents[j] for j in chunk), encoding="utf-8")
    return str(out)


def _build(corpus, tokenizer, out, **kw) -> dict:
    cfg = BuildConfig(inputs=[corpus], tokenizer=tokenizer, out=str(out), seq_len=SEQ_LEN,
                      validation_fraction=0.1, rows_per_shard=500, **kw)
    return run_build(cfg)


def _files(d) -> dict[str, bytes]:
    return {
        n: open(os.path.join(d, n), "rb").read()
        for n in sorted(os.listdir(d))
        if n.endswith((".arrow", ".json"))
    }


@pytest.fixture(scope="session")
def full_build(split_corpus, wordpiece_tokenizer_dir, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("full") / "shards"
    _build(split_corpus, wordpiece_tokenizer_dir, out, workers=1)
    return str(out)


def test_two_workers_write_the_same_bytes_as_one(split_corpus, wordpiece_tokenizer_dir, full_build, tmp_path):
    _build(split_corpus, wordpiece_tokenizer_dir, tmp_path / "two", workers=2)
    one, two = _files(full_build), _files(tmp_path / "two")
    assert len([n for n in one if n.startswith("train-")]) > 1  # several shards, cut mid-build
    assert one == two


def test_chunked_files_pack_to_the_same_bytes(
    split_corpus, wordpiece_tokenizer_dir, full_build, tmp_path, monkeypatch
):
    """Large files are tokenized in several bounded chunks; full-sentences rows do not change."""
    monkeypatch.setattr(build_worker, "CHUNK_CHARS", 20_000)
    _build(split_corpus, wordpiece_tokenizer_dir, tmp_path / "chunked", workers=1)
    assert _files(tmp_path / "chunked") == _files(full_build)


@pytest.fixture(scope="session")
def big_file_corpus(split_corpus, tmp_path_factory) -> str:
    """The split corpus as one file (a single work unit unless file_parts' part sizes are made small)."""
    out = tmp_path_factory.mktemp("big_file")
    parts = [Path(split_corpus, f"part-{i}.txt").read_text(encoding="utf-8") for i in range(FILES)]
    (out / "all.txt").write_text("\n\n".join(parts), encoding="utf-8")
    return str(out)


@pytest.mark.parametrize("mode", ["full-sentences", "nsp"])
def test_one_big_file_is_tokenized_in_parts_with_the_same_bytes_for_any_worker_count(
    mode, big_file_corpus, wordpiece_tokenizer_dir, tmp_path, monkeypatch
):
    whole = tmp_path / "whole"
    _build(big_file_corpus, wordpiece_tokenizer_dir, whole, workers=1, mode=mode)
    for name in ("MIN_PART_BYTES", "MAX_PART_BYTES"):  # the forked workers inherit them
        monkeypatch.setattr(file_parts, name, 64 << 10)
    (source,) = expand_inputs([big_file_corpus])
    assert file_parts.part_count(source) >= 6
    _build(big_file_corpus, wordpiece_tokenizer_dir, tmp_path / "one", workers=1, mode=mode)
    _build(big_file_corpus, wordpiece_tokenizer_dir, tmp_path / "two", workers=2, mode=mode)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    arrow = lambda d: {k: v for k, v in _files(d).items() if k.endswith(".arrow")}  # noqa: E731
    if mode == "full-sentences":  # the same documents, split and ordered alike: the cut changes no row
        assert arrow(tmp_path / "one") == arrow(whole)
    recorded = Manifest.load(str(tmp_path / "one")).sources
    assert [s["sha256"] for s in recorded] == [file_parts.content_sha256(source)]
    assert verify_shards(str(tmp_path / "one")) == []


def test_a_big_file_interrupted_after_some_of_its_units_resumes_to_the_same_bytes(
    big_file_corpus, wordpiece_tokenizer_dir, tmp_path, monkeypatch, caplog
):
    for name in ("MIN_PART_BYTES", "MAX_PART_BYTES"):
        monkeypatch.setattr(file_parts, name, 64 << 10)
    reference = tmp_path / "reference"
    _build(big_file_corpus, wordpiece_tokenizer_dir, reference, workers=1)
    done = []
    real = build_worker.process_unit

    def three_units_then_kill(unit):
        if len(done) == 3:
            raise KeyboardInterrupt("simulated kill")
        done.append(real(unit))
        return done[-1]

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(build_worker, "process_unit", three_units_then_kill)
        with pytest.raises(KeyboardInterrupt):
            _build(big_file_corpus, wordpiece_tokenizer_dir, out, workers=1)
    caplog.set_level("INFO")
    _build(big_file_corpus, wordpiece_tokenizer_dir, out, workers=2)
    (source,) = expand_inputs([big_file_corpus])
    assert f"resuming: 3 of {file_parts.part_count(source)} work units already done" in caplog.text
    assert _files(out) == _files(reference)


@pytest.mark.parametrize("mode", ["nsp", "sop"])
def test_pair_modes_are_worker_count_independent(mode, split_corpus, wordpiece_tokenizer_dir, tmp_path):
    _build(split_corpus, wordpiece_tokenizer_dir, tmp_path / "one", workers=1, mode=mode)
    _build(split_corpus, wordpiece_tokenizer_dir, tmp_path / "two", workers=2, mode=mode)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    rows = ShardReader(str(tmp_path / "one")).take(range(len(ShardReader(str(tmp_path / "one")))))
    assert 0.4 < rows["pair_label"].mean() < 0.6


def test_rows_decode_to_the_tokenized_documents(full_build, wordpiece_tokenizer_dir, sample_documents):
    """Rows minus [CLS]/pad, joined, are the cleaned documents' tokens each followed by [SEP]."""
    tok = load_tokenizer(wordpiece_tokenizer_dir)
    manifest = Manifest.load(full_build)
    docs = []
    for split in ("train", "validation"):
        reader = ShardReader(full_build, split)
        assert len(reader) == manifest.splits[split]["rows"] > 0
        rows = reader.take(range(len(reader)))
        assert (rows["input_ids"][:, 0] == tok.special_ids.cls).all()
        assert (rows["length"][:-1] == SEQ_LEN).all()
        docs += _split_docs(_stream(rows), tok.special_ids.sep)
    cleaner = Cleaner(CleanConfig(), BuildReport())
    texts = [t for i, text in enumerate(sample_documents) for t in cleaner.clean(Document(text, "x", i))]
    expected = [ids.tolist() for ids, _ in tok.encode_batch(texts)]
    assert sorted(docs) == sorted(expected)  # the split reorders documents; none is lost or altered
    assert manifest.counts["documents"] == len(sample_documents)
    assert summary(full_build)["tokens"] == sum(len(d) + 1 for d in expected) + manifest.rows


def _stream(rows: dict) -> np.ndarray:
    return np.concatenate([r[1:n] for r, n in zip(rows["input_ids"], rows["length"], strict=True)])


def _split_docs(stream: np.ndarray, sep: int) -> list[list[int]]:
    cuts = np.flatnonzero(stream == sep)
    return [part[:-1].tolist() for part in np.split(stream, cuts + 1)[:-1]]  # drop each [SEP]


def test_verify_names_a_flipped_byte_and_a_truncated_shard(split_corpus, wordpiece_tokenizer_dir, tmp_path):
    out = tmp_path / "shards"
    _build(split_corpus, wordpiece_tokenizer_dir, out, workers=1)
    assert verify_shards(str(out)) == []
    flipped, truncated = out / "train-00000.arrow", out / "validation-00000.arrow"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    problems = verify_shards(str(out))
    assert len(problems) == 2
    assert "train-00000.arrow" in problems[0] and "sha256" in problems[0]
    assert "validation-00000.arrow" in problems[1] and "size" in problems[1]


@pytest.fixture(scope="session")
def two_partitions(split_corpus, wordpiece_tokenizer_dir, tmp_path_factory) -> list[str]:
    """The two partitions of one build of `split_corpus` (files 0, 2, 4 and 1, 3, 5)."""
    root = tmp_path_factory.mktemp("partitions")
    parts = [str(root / f"part{i}") for i in range(2)]
    for i, part in enumerate(parts):
        _build(split_corpus, wordpiece_tokenizer_dir, part, num_partitions=2, partition_index=i)
    return parts


def test_merged_partitions_hold_the_same_documents_as_one_build(two_partitions, full_build, tmp_path):
    parts = two_partitions
    for i, part in enumerate(parts):
        assert Manifest.load(part).build["partition"] == {"index": i, "count": 2}
    merged = merge_parts(parts, str(tmp_path / "merged"))
    assert verify_shards(str(tmp_path / "merged")) == []
    single = Manifest.load(full_build)
    assert merged.counts["documents"] == single.counts["documents"]
    assert merged.data_identity() == single.data_identity()  # one build, however it was cut
    sep = single.tokenizer["special_ids"]["sep"]
    for split in ("train", "validation"):
        docs = []
        for d in (full_build, str(tmp_path / "merged")):
            reader = ShardReader(d, split)
            docs.append(sorted(_split_docs(_stream(reader.take(range(len(reader)))), sep)))
        assert docs[0] == docs[1]
    reversed_order = merge_parts(parts[::-1], str(tmp_path / "reversed"))  # parts are taken in index order
    assert reversed_order.splits == merged.splits and reversed_order.sources == merged.sources


def test_merge_refuses_a_repeated_or_missing_partition(two_partitions, tmp_path):
    p0, p1 = two_partitions
    with pytest.raises(DataError, match=rf"partition 0 of 2 is given twice \({p0} and {p0}\)"):
        merge_parts([p0, p1, p0], str(tmp_path / "twice"))
    with pytest.raises(DataError, match=r"partition 1 of 2 missing: merge needs all 2 partition directories"):
        merge_parts([p0], str(tmp_path / "half"))
    assert not (tmp_path / "twice").exists() and not (tmp_path / "half").exists()


def test_merge_refuses_a_partition_of_another_build(
    two_partitions, split_corpus, wordpiece_tokenizer_dir, tmp_path
):
    other = str(tmp_path / "other-seed")
    _build(split_corpus, wordpiece_tokenizer_dir, other, num_partitions=2, partition_index=1, seed=7)
    with pytest.raises(DataError, match=rf"{other}: built from other inputs or settings than"):
        merge_parts([two_partitions[0], other], str(tmp_path / "merged"))


def test_verify_catches_a_manifest_claiming_an_incomplete_merge(two_partitions, tmp_path):
    # What the old `merge p0` and `merge p0 p0` wrote: a partition's manifest relabelled as a whole build.
    half = tmp_path / "half"
    shutil.copytree(two_partitions[0], half)
    manifest = json.loads((half / "manifest.json").read_text())
    manifest["build"]["partition"] = None
    (half / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify_shards(str(half))
    assert (
        problem
        == f"{half / 'manifest.json'}: holds 3 of the 6 input files of its build (a merge missing "
        + ("partitions?); merge all partitions again")
    )
    manifest["sources"] = manifest["sources"] * 2
    (half / "manifest.json").write_text(json.dumps(manifest))
    (problem,) = verify_shards(str(half))
    assert "more than once (a partition merged twice?)" in problem
    assert verify_shards(two_partitions[1]) == []  # a partition on its own is whole for what it claims


def test_merge_refuses_parts_of_different_builds(mixed_format_dir, wordpiece_tokenizer_dir, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_build(BuildConfig(inputs=[mixed_format_dir], tokenizer=wordpiece_tokenizer_dir, out=a, seq_len=32))
    run_build(BuildConfig(inputs=[mixed_format_dir], tokenizer=wordpiece_tokenizer_dir, out=b, seq_len=64))
    with pytest.raises(DataError, match=f"{b}: seq_len 64 differs from {a}'s 32"):
        merge_parts([a, b], str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "manifest.json").exists()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("linked", [True, False], ids=["tokenizer-copy", "shard-copy"])
def test_merge_on_a_full_disk_is_one_line_naming_the_file(two_partitions, tmp_path, capsys, monkeypatch, linked):
    out = tmp_path / "merged"
    monkeypatch.setattr(os, "sendfile", _no_space)  # shutil.copyfile's write: what a full disk raises
    if not linked:  # another filesystem: the shards are copied, not hard-linked
        monkeypatch.setattr(os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    assert main(["merge", *two_partitions, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "mlm-data merge" in line]
    assert len(lines) == 1 and "[(" not in err, err
    what = "tokenizer.tmp/" if linked else "train-00000.arrow"
    assert lines[0].startswith(f"mlm-data merge: error: {out}") and what in lines[0], lines[0]
    assert "No space left on device; the disk is full" in lines[0]
    assert not (out / "manifest.json").exists() and not (out / "tokenizer").exists()
    monkeypatch.undo()  # space freed: the rerun completes
    merge_parts(two_partitions, str(out))
    assert verify_shards(str(out)) == []
    assert sorted(os.listdir(out / "tokenizer")) == sorted(os.listdir(Path(two_partitions[0]) / "tokenizer"))
