"""file_parts: a big file read as several work units yields exactly the documents (texts and byte
offsets) of reading it whole, in every splittable format, and its digest covers every byte."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.ingest import file_parts
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import SourceFile, expand_inputs, iter_documents

PART_BYTES = 97  # odd and small: blocks end anywhere, inside a line, a separator or a character


def _read(source, parts: bool, **kwargs):
    report = BuildReport()
    count = file_parts.part_count(source) if parts else 1
    docs = [d for p in range(count) for d in iter_documents(source, report, part=p, **kwargs)]
    return [(d.text, d.offset) for d in docs], report.counts


def _paragraph_text(sample_documents) -> bytes:
    # Documents separated by one or more blank lines, some holding spaces, tabs or CRLF line ends.
    separators = ["\n\n", "\n\n\n", "\n \t\n", "\r\n\r\n", "\n\n   \n\n"]
    pieces = [doc + separators[i % len(separators)] for i, doc in enumerate(sample_documents[:40])]
    return ("\ufeff" + "".join(pieces) + "Last, 中文 ünïcödé 🙂.").encode()


def _part_bytes(monkeypatch, size: int) -> None:
    for name in ("MIN_PART_BYTES", "MAX_PART_BYTES"):
        monkeypatch.setattr(file_parts, name, size)


@pytest.fixture
def small_parts(monkeypatch):
    _part_bytes(monkeypatch, PART_BYTES)


@pytest.mark.parametrize("layout", ["paragraphs", "lines", "jsonl"])
def test_text_read_in_parts_yields_the_documents_of_the_whole_file(
    layout, sample_documents, tmp_path, monkeypatch
):
    if layout == "jsonl":
        lines = [json.dumps({"text": t}) for t in sample_documents[:40]]
        data = ("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n").encode()  # a blank line too
        path = tmp_path / "a.jsonl"
    elif layout == "lines":
        data = "\n".join(d.replace("\n", " ") for d in sample_documents[:40]).encode()
        path = tmp_path / "a.txt"
    else:
        data = _paragraph_text(sample_documents)
        path = tmp_path / "a.txt"
    path.write_bytes(data)
    (source,) = expand_inputs([str(path)])
    kwargs = {"one_per_line": layout == "lines"}
    whole, whole_counts = _read(source, parts=False, **kwargs)
    _part_bytes(monkeypatch, PART_BYTES)
    assert file_parts.part_count(source) == -(-len(data) // PART_BYTES) > 20
    in_parts, part_counts = _read(source, parts=True, **kwargs)
    assert len(whole) >= 40 and in_parts == whole and part_counts == whole_counts
    if layout != "jsonl":  # each document's offset is where its text begins in the file
        for text, offset in whole:
            assert data[offset : offset + len(text.encode())] == text.encode()


def test_parquet_row_groups_are_shared_out_with_their_row_numbers(sample_documents, tmp_path, small_parts):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": sample_documents[:50]}), path, row_group_size=7)
    (source,) = expand_inputs([str(path)])
    parts = file_parts.part_count(source)
    assert parts > pq.ParquetFile(path).num_row_groups  # some units read no row group at all
    in_parts, _ = _read(source, parts=True)
    assert in_parts == [(text, row) for row, text in enumerate(sample_documents[:50])]


def test_part_sizes_keep_several_workers_busy_within_bounds():
    mib = 1 << 20
    expected = {
        mib: 1,
        2 * mib - 1: 1,
        3 * mib + 5: 3,
        12 * mib: 12,
        64 * mib: 16,
        65 * mib: 17,
        1000 * mib: 250,
    }
    for size, parts in expected.items():
        source = SourceFile("x.txt", "txt", None, size)
        assert file_parts.part_count(source) == parts
        blocks = [file_parts.block(source, k) for k in range(parts)]
        assert blocks[0][0] == 0 and blocks[-1][1] == size  # the blocks tile the file
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        assert parts == 1 or all(mib <= end - start <= 4 * mib for start, end in blocks[:-1])


def test_compressed_and_small_files_are_one_part(tmp_path, small_parts):
    (tmp_path / "a.txt.gz").write_bytes(b"x" * 1000)
    (tmp_path / "b.txt").write_bytes(b"x" * PART_BYTES)
    for source in expand_inputs([str(tmp_path)]):
        assert file_parts.part_count(source) == 1 and file_parts.block(source, 0) == (0, source.size)


def test_digest_is_the_sha256_or_that_of_the_block_digests(tmp_path, monkeypatch):
    data = bytes(range(256)) * 10
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    (source,) = expand_inputs([str(path)])
    assert file_parts.content_sha256(source) == hashlib.sha256(data).hexdigest()
    _part_bytes(monkeypatch, 1000)
    ranges = [file_parts.block(source, k) for k in range(file_parts.part_count(source))]
    assert len(ranges) == 3  # 2560 bytes in blocks of at most 1000
    blocks = [hashlib.sha256(data[a:b]).digest() for a, b in ranges]
    assert file_parts.content_sha256(source) == hashlib.sha256(b"".join(blocks)).hexdigest()
    path.write_bytes(data[:-1] + b"\x00")  # one byte of the last block
    assert file_parts.content_sha256(source) != hashlib.sha256(b"".join(blocks)).hexdigest()
