"""sources: every input format and compression, path expansion, invalid UTF-8 and bad inputs."""

import bz2
import gzip
import json
import lzma
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_pipeline.errors import DataError
from data_pipeline.ingest import sources
from data_pipeline.ingest.input_files import parse_extensions
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import SourceFile, expand_input_set, expand_inputs, iter_documents

DOCS = [
    "First document,\nwith two lines.",
    "Zweites Dokument: naïve café ünïcödé ✓.",
    "Third one 🙂 ends here.",
]
COMPRESSORS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "xz": lzma.compress,
}


def write(path, data: bytes, compression=None) -> str:
    path = str(path) + (f".{compression}" if compression else "")
    with open(path, "wb") as fh:
        fh.write(COMPRESSORS[compression](data) if compression else data)
    return path


def read_all(path, **kwargs):
    report = BuildReport()
    (source,) = expand_inputs([path])
    return [d.text for d in iter_documents(source, report, **kwargs)], report


@pytest.mark.parametrize("compression", [None, "gz", "bz2", "zst", "xz"])
def test_txt_documents_separated_by_blank_lines(tmp_path, compression):
    # Several blank lines, whitespace-only lines and CRLF line ends all separate documents.
    data = f"\n\n{DOCS[0]}\n\n\n{DOCS[1]}\r\n  \t\r\n{DOCS[2]}\n".encode()
    path = write(tmp_path / "a.txt", data, compression)
    texts, report = read_all(path)
    assert [t.rstrip("\r\n") for t in texts] == DOCS
    assert report.counts == {"files": 1}


@pytest.mark.parametrize("compression", [None, "gz", "bz2", "zst", "xz"])
def test_txt_one_document_per_line(tmp_path, compression):
    path = write(tmp_path / "a.txt", b"one\ntwo words\n\nthree\n", compression)
    texts, _ = read_all(path, one_per_line=True)
    assert texts == ["one", "two words", "three"]


@pytest.mark.parametrize("compression", [None, "gz", "bz2", "zst", "xz"])
def test_jsonl_reads_text_field_and_byte_offsets(tmp_path, compression):
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(DOCS)]
    lines.insert(1, "")  # a blank line is skipped but still counts as a line
    lines.append(json.dumps({"text": None}))
    path = write(tmp_path / "a.jsonl", ("\n".join(lines) + "\n").encode(), compression)
    report = BuildReport()
    (source,) = expand_inputs([path])
    docs = list(iter_documents(source, report))
    assert [d.text for d in docs] == DOCS
    starts = [0, len(lines[0]) + 2, len(lines[0]) + len(lines[2]) + 3]  # the lines' first bytes
    assert [d.offset for d in docs] == starts and {d.unit for d in docs} == {"byte"}
    assert report.counts["null_text"] == 1


def test_jsonl_custom_text_field(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"body": "hello"}\n')
    assert read_all(path, text_field="body")[0] == ["hello"]


@pytest.mark.parametrize("column_type", [pa.string(), pa.large_string()])
def test_parquet_reads_text_column_across_row_groups(tmp_path, column_type):
    texts = [f"document number {i} {DOCS[i % 3]}" for i in range(50)] + [None]
    path = str(tmp_path / "a.parquet")
    table = pa.table({"id": list(range(51)), "content": pa.array(texts, column_type)})
    pq.write_table(table, path, row_group_size=7)
    read, report = read_all(path, text_field="content")
    assert read == texts[:-1]
    assert report.counts["null_text"] == 1


def test_parquet_binary_column_is_decoded(tmp_path):
    path = str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"text": pa.array([b"caf\xc3\xa9", b"bad \xff byte"], pa.binary())}), path)
    texts, report = read_all(path)
    assert texts == ["café", "bad \ufffd byte"]
    assert report.counts["invalid_utf8_replaced"] == 1


def test_parquet_without_text_column_names_columns(tmp_path):
    path = str(tmp_path / "a.parquet")
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(DataError, match=r"a\.parquet.*no column 'text'.*body"):
        read_all(path)


def test_invalid_utf8_replaced_and_counted_with_byte_offset(tmp_path):
    path = write(tmp_path / "bad.txt", b"good text\n\nbad \xff here and \xc3\x28 there\n")
    texts, report = read_all(path)
    assert texts[1] == "bad \ufffd here and \ufffd( there\n"
    assert report.counts["invalid_utf8_replaced"] == 2
    assert f"invalid_utf8_replaced: {path}: invalid UTF-8 at byte 15" in report.examples
    assert f"invalid_utf8_replaced: {path}: invalid UTF-8 at byte 26" in report.examples


def test_tiny_chunks_split_nothing(tmp_path, monkeypatch):
    # Chunk boundaries fall inside multi-byte characters, blank-line separators and invalid bytes:
    # the documents and the error offsets must not depend on where the reads stop.
    data = ("\n\n".join(DOCS) + "\n\n").encode() + b"tail \xff\xfe end"
    path = write(tmp_path / "a.txt", data)
    expected, expected_report = read_all(path)
    for chunk in (1, 2, 3, 5, 7):
        monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
        texts, report = read_all(path)
        assert texts == expected, chunk
        assert report.counts == expected_report.counts
        assert report.examples == expected_report.examples


def test_overlong_paragraph_is_cut_at_a_newline(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_PENDING_CHARS", 50)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 16)
    lines = [f"line {i} of a paragraph" for i in range(20)]
    path = write(tmp_path / "a.txt", "\n".join(lines).encode())
    texts, report = read_all(path)
    assert "".join(texts) == "\n".join(lines)
    assert all(len(t) <= 50 for t in texts[:-1])
    assert report.counts["txt_long_paragraph_cut"] >= 1


def test_utf8_bom_is_dropped(tmp_path):
    path = write(tmp_path / "a.jsonl", b'\xef\xbb\xbf{"text": "x"}\n')
    assert read_all(path)[0] == ["x"]


def test_expand_inputs_dirs_globs_and_skips(tmp_path, caplog):
    root = tmp_path / "data"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in [
        "b.txt",
        "a.jsonl.gz",
        "sub/c.parquet",
        "sub/deeper/d.txt.zst",
        "README.md",
        "sub/x.csv",
        ".hidden/e.txt",
    ]:
        (root / name).write_bytes(b"")
    found = expand_inputs([str(root)])
    assert [os.path.relpath(s.path, root) for s in found] == [
        "a.jsonl.gz",
        "b.txt",
        "sub/c.parquet",
        "sub/deeper/d.txt.zst",
    ]
    assert [(s.format, s.compression) for s in found] == [
        ("jsonl", "gz"),
        ("txt", None),
        ("parquet", None),
        ("txt", "zst"),
    ]
    assert "skipped 3 input files: .csv x1, .md x1, hidden x1" in caplog.text
    skipped = expand_input_set([str(root)]).skipped
    assert [(os.path.relpath(s.path, root), s.reason) for s in skipped] == [
        (".hidden", "hidden"),
        ("README.md", "extension"),
        ("sub/x.csv", "extension"),
    ]
    by_glob = expand_inputs([str(root / "**" / "*.txt*")])
    assert [os.path.basename(s.path) for s in by_glob] == ["b.txt", "d.txt.zst"]
    # Arguments keep their order; a file named twice appears once.
    twice = expand_inputs([str(root / "b.txt"), str(root), str(root / "b.txt")])
    assert os.path.basename(twice[0].path) == "b.txt" and len(twice) == 4


def test_source_file_records_size(tmp_path):
    path = write(tmp_path / "a.txt", b"12345")
    mtime_ns = os.stat(path).st_mtime_ns
    assert expand_inputs([path]) == [
        SourceFile(path=path, format="txt", compression=None, size=5, mtime_ns=mtime_ns)
    ]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing.txt"), r"missing\.txt.*does not exist"),
        (lambda d: str(d / "nothing-*.txt"), r"nothing-\*\.txt.*matched nothing"),
        (lambda d: write(d / "notes.md", b"x"), r"notes\.md: unknown input extension"),
        (lambda d: write(d / "data.parquet", b"x", "gz"), r"data\.parquet\.gz: unknown input extension"),
    ],
)
def test_expand_inputs_errors_name_the_path(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        expand_inputs([make(tmp_path)])


def test_directory_without_known_files_is_an_error(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match=r"no readable input files.*skipped 1 files"):
        expand_inputs([str(tmp_path)])


def test_binary_file_is_rejected(tmp_path):
    path = write(tmp_path / "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match=r"image\.txt: looks binary"):
        read_all(path)


def test_utf16_file_is_rejected_as_binary(tmp_path):
    path = write(tmp_path / "wide.jsonl", '{"text": "x"}\n'.encode("utf-16"))
    with pytest.raises(DataError, match=r"wide\.jsonl: looks binary.*UTF-16"):
        read_all(path)


def test_unreadable_file_is_an_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    path = write(tmp_path / "secret.txt", b"x")
    os.chmod(path, 0)
    with pytest.raises(DataError, match=r"secret\.txt.*not readable"):
        expand_inputs([path])


def test_source_that_cannot_be_opened_is_an_error(tmp_path):
    # A directory where a file was expected (or a file deleted after expansion) cannot be opened.
    (tmp_path / "shard.txt").mkdir()
    source = SourceFile(path=str(tmp_path / "shard.txt"), format="txt", compression=None, size=0)
    with pytest.raises(DataError, match=r"shard\.txt: cannot read input file"):
        list(iter_documents(source, BuildReport()))


@pytest.mark.parametrize("compression", ["gz", "bz2", "zst", "xz"])
def test_truncated_compressed_file_is_an_error(tmp_path, compression):
    path = write(tmp_path / "a.txt", os.urandom(1000).hex().encode(), compression)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError, match=rf"a\.txt\.{compression}: corrupt or truncated {compression} data"):
        read_all(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "unterminated', r"line 2 is not valid JSON"),
        ('["a", "list"]', r"line 2 is a JSON list, expected an object"),
        ('{"body": "x"}', r"line 2 has no field 'text' \(fields: body\)"),
        ('{"text": 5}', r"line 2: field 'text' is a int, not a string"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", ('{"text": "fine"}\n' + line + "\n").encode())
    with pytest.raises(DataError, match=r"bad\.jsonl: " + message):
        read_all(path)


def test_every_format_reads_back_the_same_documents(mixed_format_dir, sample_documents):
    report = BuildReport()
    found = expand_inputs([mixed_format_dir])
    assert [(s.format, s.compression) for s in found] == [("txt", "gz"), ("jsonl", "zst"), ("parquet", None)]
    texts = [d.text for s in found for d in iter_documents(s, report)]
    assert texts == sample_documents[: len(texts)] and len(texts) == 60
    assert report.counts == {"files": 3}


def test_symlinked_directories_are_followed_once(tmp_path):
    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    write(root / "a.txt", b"a")
    write(root / "sub" / "b.txt", b"b")
    write(elsewhere / "c.txt", b"c")
    os.symlink(elsewhere, root / "linked")  # a symlinked subdirectory: read
    os.symlink(root, root / "sub" / "loop")  # a loop back to the root: not walked again
    os.symlink(root / "sub", root / "zz-again")  # the same directory under a second name: read once
    os.symlink(root / "a.txt", root / "z-link.txt")  # the same file under a second name: read once
    found = expand_input_set([str(root)])
    assert sorted(os.path.relpath(f.path, root) for f in found.files) == [
        "a.txt",
        "linked/c.txt",
        "sub/b.txt",
    ]
    assert found.skipped == []


def test_skipped_files_are_counted_and_too_many_fail_the_check(tmp_path):
    write(tmp_path / "kept.txt", b"x" * 100)
    for name in ("wiki_00", "wiki_01"):
        write(tmp_path / name, b"y" * 400)
    write(tmp_path / "notes.text", b"z" * 50)
    write(tmp_path / ".DS_Store", b"\0" * 5000)  # hidden: counted, never a reason to fail
    inputs = expand_input_set([str(tmp_path)])
    assert inputs.skipped_summary() == {
        "files": 4,
        "bytes": 5850,
        "by_extension": {
            "(no extension)": {"files": 2, "bytes": 800},
            ".text": {"files": 1, "bytes": 50},
            "hidden": {"files": 1, "bytes": 5000},
        },
        "examples": [str(tmp_path / n) for n in (".DS_Store", "notes.text", "wiki_00", "wiki_01")],
    }
    with pytest.raises(DataError) as err:
        inputs.check_skipped(0.10)
    message = str(err.value)
    assert "3 input files (850 bytes, 89.5% of the 950 input bytes; the limit is 10%)" in message
    assert "(no extension) x2, .text x1" in message and str(tmp_path / "wiki_00") in message
    assert "--ext" in message and "--accept-skipped" in message
    inputs.check_skipped(0.9)  # under a looser limit: fine
    ext = expand_input_set([str(tmp_path)], parse_extensions(["", ".text"]))
    assert sorted(os.path.basename(f.path) for f in ext.files) == [
        "kept.txt",
        "notes.text",
        "wiki_00",
        "wiki_01",
    ]
    assert [s.reason for s in ext.skipped] == ["hidden"]


def test_ext_flag_values(tmp_path):
    assert parse_extensions(["text", ".JSON=jsonl", "", "pq=parquet"]) == {
        ".text": "txt",
        ".json": "jsonl",
        "": "txt",
        ".pq": "parquet",
    }
    with pytest.raises(DataError, match="unknown format 'csv'"):
        parse_extensions([".tsv=csv"])
    with pytest.raises(DataError, match=r"\.gz is already read"):
        parse_extensions([".gz"])
    path = write(tmp_path / "wiki_00", b"compressed, no format suffix", "xz")  # wiki_00.xz
    (source,) = expand_inputs([path], parse_extensions([""]))
    assert (source.format, source.compression) == ("txt", "xz")
    assert [d.text for d in iter_documents(source, BuildReport())] == ["compressed, no format suffix"]


def test_a_file_without_extension_named_explicitly_is_read_when_it_is_text(tmp_path):
    text = write(tmp_path / "wiki_00", "<doc id=1>\nArticle text, ünïcödé.\n</doc>\n".encode())
    assert read_all(text)[0] == ["<doc id=1>\nArticle text, ünïcödé.\n</doc>\n"]
    binary = write(tmp_path / "blob", bytes(range(1, 256)) * 20)
    with pytest.raises(DataError, match=r"blob: no extension and its first bytes are not UTF-8 text"):
        expand_inputs([binary])
    with pytest.raises(DataError, match=r"notes\.md: unknown input extension.*--ext \.md"):
        expand_inputs([write(tmp_path / "notes.md", b"text")])


def test_binary_without_nul_bytes_is_refused(tmp_path):
    # No NUL in the first 8 KiB (what the old check looked at), but bytes no text file holds.
    junk = bytes(b for b in os.urandom(50_000) if b) + b"\0"
    path = write(tmp_path / "image.txt", junk)
    with pytest.raises(
        DataError,
        match=r"image\.txt: \d+% of the first \d+ characters are invalid UTF-8 or "
        r"control characters \(the limit is 30%\)",
    ):
        read_all(path)
    tail = write(tmp_path / "tail.txt", b"plain text. " * 1000 + bytes(range(1, 32)) * 2000)
    with pytest.raises(
        DataError, match=r"tail\.txt: "
    ):  # garbage after a clean start: the share is cumulative
        read_all(tail)
    latin1 = write(tmp_path / "latin1.txt", "Caf\xe9 cr\xe8me, na\xefve. ".encode("latin-1") * 100)
    texts, report = read_all(latin1)  # a few invalid bytes in text: read, repaired and counted
    assert report.counts["invalid_utf8_replaced"] == 300 and "Caf\ufffd" in texts[0]


def test_binary_parquet_column_of_junk_is_refused(tmp_path):
    path = str(tmp_path / "blobs.parquet")
    pq.write_table(pa.table({"text": pa.array([bytes(range(128, 256)) * 10] * 3, pa.binary())}), path)
    with pytest.raises(DataError, match=r"blobs\.parquet: 100% of the first 3840 characters"):
        read_all(path)
