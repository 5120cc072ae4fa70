"""Input files -> documents: expand paths/dirs/globs, then stream `.txt` `.jsonl` `.parquet` files.

Compressed variants (`.gz` `.bz2` `.zst`) are decompressed as a stream; nothing reads a whole file into
memory. Invalid UTF-8 is replaced with U+FFFD and counted in the `CleanReport` with the file and byte offset.
Every bad input raises `DataError` naming the file (and the line or row where there is one).
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import io
import json
import logging
import os
import re
import threading
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from data_pipeline.clean import CleanReport
from data_pipeline.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
COMPRESSION_SUFFIXES = {".gz": "gz", ".bz2": "bz2", ".zst": "zst"}
KNOWN_EXTENSIONS = ".txt, .jsonl or .parquet (.txt/.jsonl optionally + .gz, .bz2 or .zst)"
CHUNK_BYTES = 1 << 20
BINARY_SNIFF_BYTES = 8192
# A .txt paragraph with no blank line for this many characters is cut at a newline so memory stays
# bounded; the cleaner splits documents far below this size anyway (CleanConfig.max_doc_chars).
MAX_PENDING_CHARS = 8 << 20
INVALID_UTF8_EXAMPLES_PER_CHUNK = 3

_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")


@dataclass(frozen=True)
class SourceFile:
    """One input file: `format` is 'txt' | 'jsonl' | 'parquet'; `compression` None | 'gz' | 'bz2' | 'zst'."""

    path: str
    format: str
    compression: str | None
    size: int


@dataclass(frozen=True, slots=True)
class Document:
    """One document's raw text, the file it came from and its record number within that file."""

    text: str
    source: str
    index: int


def detect_format(path: str) -> tuple[str, str | None] | None:
    """Return (format, compression) from a file name's suffixes, or None for an unknown extension."""
    stem, ext = os.path.splitext(path.lower())
    compression = COMPRESSION_SUFFIXES.get(ext)
    if compression is not None:
        stem, ext = os.path.splitext(stem)
    fmt = FORMAT_SUFFIXES.get(ext)
    if fmt is None or (fmt == "parquet" and compression is not None):
        return None  # parquet compresses internally; an outer .gz around it is not something we read
    return fmt, compression


def expand_inputs(paths: Sequence[str]) -> list[SourceFile]:
    """Expand files, directories (recursively) and globs into a deterministic list of `SourceFile`s.

    Order: the arguments in the order given, each directory walk and glob sorted by path; duplicates
    keep their first position. Files with unknown extensions found in a directory or by a glob are
    skipped and counted in a log line; hidden files and directories (dot names) are skipped.

    Raises:
        DataError: no paths; a missing path; a glob matching nothing; an explicitly named file with an
            unknown extension; an unreadable file; or no readable input file at all.
    """
    if not paths:
        raise DataError("no input paths given: pass files, directories or globs of .txt/.jsonl/.parquet")
    found: dict[str, SourceFile] = {}
    skipped: Counter[str] = Counter()
    for raw in paths:
        if glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise DataError(f"input glob {raw!r} matched nothing (working directory: {os.getcwd()})")
            for match in matches:
                if os.path.isdir(match):
                    _walk_directory(match, found, skipped)
                else:
                    _add_file(match, found, skipped, explicit=False)
        elif os.path.isdir(raw):
            _walk_directory(raw, found, skipped)
        elif os.path.lexists(raw):
            _add_file(raw, found, skipped, explicit=True)
        else:
            raise DataError(f"input path {raw!r} does not exist (working directory: {os.getcwd()})")
    if skipped:
        summary = ", ".join(f"{ext or '(no extension)'} x{n}" for ext, n in sorted(skipped.items()))
        logger.warning("skipped %d files with unknown extensions: %s", sum(skipped.values()), summary)
    if not found:
        raise DataError(
            f"no readable input files in {list(paths)}: expected {KNOWN_EXTENSIONS}"
            + (f"; skipped {sum(skipped.values())} files with other extensions" if skipped else "")
        )
    return list(found.values())


def _walk_directory(root: str, found: dict[str, SourceFile], skipped: Counter[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                _add_file(os.path.join(dirpath, name), found, skipped, explicit=False)


def _add_file(path: str, found: dict[str, SourceFile], skipped: Counter[str], *, explicit: bool) -> None:
    path = os.path.normpath(path)
    if path in found:
        return
    detected = detect_format(path)
    if detected is None:
        if explicit:
            raise DataError(f"{path}: unknown input extension; expected {KNOWN_EXTENSIONS}")
        skipped[os.path.splitext(path)[1].lower()] += 1
        return
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot stat input file ({exc.strerror}); is it a broken link?") from exc
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: input file is not readable (permission denied); fix its permissions")
    found[path] = SourceFile(path=path, format=detected[0], compression=detected[1], size=size)


def iter_documents(
    source: SourceFile, report: CleanReport, *, text_field: str = "text", one_per_line: bool = False
) -> Iterator[Document]:
    """Stream the documents of one file (raw text; clean them with `clean.Cleaner`).

    - `.txt`: documents separated by blank lines, or one per line with `one_per_line=True`.
    - `.jsonl`: one JSON object per line, text in `text_field`; `index` is the 0-based line number.
    - `.parquet`: the `text_field` column, read in record batches (bounded memory).
    Null texts (JSONL null, Parquet null) are skipped and counted as `null_text`.

    Raises:
        DataError: unreadable, binary (NUL bytes in the first 8 KiB) or corrupt/truncated compressed file;
            a JSONL line that is not a JSON object or lacks the field; a Parquet file without the column.
    """
    report.add("files")
    if source.format == "parquet":
        yield from _iter_parquet(source, report, text_field)
    elif source.format == "jsonl":
        yield from _iter_jsonl(source, report, text_field)
    elif source.format == "txt":
        yield from _iter_txt(source, report, one_per_line)
    else:
        raise DataError(f"{source.path}: unsupported format {source.format!r}")


# ---------------------------------------------------------------------------------------------- reading


def _open_binary(source: SourceFile) -> BinaryIO:
    try:
        if source.compression == "gz":
            return gzip.open(source.path, "rb")
        if source.compression == "bz2":
            return bz2.open(source.path, "rb")
        if source.compression == "zst":
            return io.BufferedReader(_ZstdReader(source.path), CHUNK_BYTES)  # adds readline() for JSONL
        return open(source.path, "rb")  # noqa: SIM115 - returned to the caller
    except OSError as exc:
        raise DataError(f"{source.path}: cannot read input file ({exc.strerror or exc})") from exc


class _ZstdReader(io.RawIOBase):
    """Streaming .zst reader (all frames) that, unlike zstandard's stream_reader, notices truncation."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._context = zstandard.ZstdDecompressor()
        self._frame = None
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            compressed = self._file.read(CHUNK_BYTES)
            if not compressed:
                if self._frame is not None and not self._frame.eof:
                    raise zstandard.ZstdError("the file ends inside a zstd frame (truncated?)")
                return 0
            self._pending = memoryview(self._decompress(compressed))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None or self._frame.eof:
                self._frame = self._context.decompressobj()
            out.append(self._frame.decompress(data))
            data = self._frame.unused_data if self._frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


_STREAM_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


def _stream_error(source: SourceFile, offset: int, exc: Exception) -> DataError:
    what = f"corrupt or truncated {source.compression} data" if source.compression else "read error"
    return DataError(f"{source.path}: {what} after {offset} decompressed bytes ({exc}); re-create the file")


def _check_not_binary(source: SourceFile, head: bytes) -> None:
    if b"\x00" in head[:BINARY_SNIFF_BYTES]:
        raise DataError(
            f"{source.path}: looks binary (NUL bytes in the first {BINARY_SNIFF_BYTES} bytes); "
            "inputs must be UTF-8 text (convert UTF-16 files to UTF-8)"
        )


class _DecodeErrors(threading.local):
    offsets: list[int]

    def __init__(self) -> None:
        self.offsets = []


_decode_errors = _DecodeErrors()


def _record_and_replace(exc: UnicodeError) -> tuple[str, int]:
    _decode_errors.offsets.append(exc.start)
    return "\ufffd", exc.end


_ERROR_HANDLER = "mlm_pretrain.replace_and_record"
codecs.register_error(_ERROR_HANDLER, _record_and_replace)


def _decode(data: bytes, base_offset: int, path: str, report: CleanReport) -> str:
    """Decode UTF-8 in one C-level pass; invalid sequences become U+FFFD and are counted with offsets."""
    text = data.decode("utf-8", _ERROR_HANDLER)
    offsets = _decode_errors.offsets
    if offsets:
        for offset in offsets[:INVALID_UTF8_EXAMPLES_PER_CHUNK]:
            report.add(
                "invalid_utf8_replaced", example=f"{path}: invalid UTF-8 at byte {base_offset + offset}"
            )
        if len(offsets) > INVALID_UTF8_EXAMPLES_PER_CHUNK:
            report.add("invalid_utf8_replaced", len(offsets) - INVALID_UTF8_EXAMPLES_PER_CHUNK)
        offsets.clear()
    return text


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of `data` without a trailing, incomplete multi-byte UTF-8 sequence (kept for the next chunk)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte < 0x80:
            return n
        if byte >= 0xC0:  # lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return n - back if need > back else n
    return n


def _iter_text_chunks(source: SourceFile, report: CleanReport) -> Iterator[str]:
    """Decoded text of a file in ~1 MiB pieces, never splitting a UTF-8 sequence."""
    offset = 0
    carry = b""
    with _open_binary(source) as fh:
        while True:
            try:
                data = fh.read(CHUNK_BYTES)
            except _STREAM_ERRORS as exc:
                raise _stream_error(source, offset, exc) from exc
            final = not data
            if offset == 0 and not carry:
                _check_not_binary(source, data)
                if data.startswith(codecs.BOM_UTF8):
                    data, offset = data[3:], 3
            data = carry + data
            cut = len(data) if final else _complete_utf8_prefix(data)
            carry = data[cut:]
            if cut:
                yield _decode(data[:cut], offset, source.path, report)
            offset += cut
            if final:
                return


def _iter_txt(source: SourceFile, report: CleanReport, one_per_line: bool) -> Iterator[Document]:
    index = 0
    pending = ""
    for chunk in _iter_text_chunks(source, report):
        parts = (pending + chunk).split("\n") if one_per_line else _BLANK_LINES.split(pending + chunk)
        pending = parts.pop()
        while len(pending) > MAX_PENDING_CHARS:
            cut = pending.rfind("\n", 0, MAX_PENDING_CHARS) + 1 or MAX_PENDING_CHARS
            parts.append(pending[:cut])
            pending = pending[cut:]
            report.add("txt_long_paragraph_cut", example=f"{source.path}: record {index + len(parts) - 1}")
        for text in parts:
            if text:
                yield Document(text, source.path, index)
                index += 1
    if pending:
        yield Document(pending, source.path, index)


def _iter_jsonl(source: SourceFile, report: CleanReport, text_field: str) -> Iterator[Document]:
    offset = 0
    line_no = 0
    with _open_binary(source) as fh:
        while True:
            try:
                line = fh.readline()
            except _STREAM_ERRORS as exc:
                raise _stream_error(source, offset, exc) from exc
            if not line:
                return
            if line_no == 0:
                _check_not_binary(source, line)
                if line.startswith(codecs.BOM_UTF8):
                    line, offset = line[3:], 3
            line_no += 1
            text_line = _decode(line, offset, source.path, report)
            offset += len(line)
            if not text_line.strip():
                continue
            text = _parse_jsonl_record(source.path, line_no, text_line, text_field)
            if text is None:
                report.add("null_text", example=f"{source.path}: line {line_no}")
                continue
            yield Document(text, source.path, line_no - 1)


def _parse_jsonl_record(path: str, line_no: int, line: str, text_field: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: line {line_no} is not valid JSON ({exc.msg} at column {exc.colno}); "
            "fix or remove the line"
        ) from exc
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {line_no} is a JSON {type(record).__name__}, expected an object")
    if text_field not in record:
        keys = ", ".join(sorted(record)[:10])
        raise DataError(
            f"{path}: line {line_no} has no field {text_field!r} (fields: {keys}); "
            "choose the text field with --text-field"
        )
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(
            f"{path}: line {line_no}: field {text_field!r} is a {type(text).__name__}, not a string"
        )
    return text


def _iter_parquet(source: SourceFile, report: CleanReport, text_field: str) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{source.path}: not a readable Parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise DataError(
            f"{source.path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
            "choose the text column with --text-field"
        )
    column_type = schema.field(text_field).type
    types = pa.types
    is_binary = (
        types.is_binary(column_type)
        or types.is_large_binary(column_type)
        or types.is_binary_view(column_type)
    )
    is_string = (
        types.is_string(column_type)
        or types.is_large_string(column_type)
        or types.is_string_view(column_type)
    )
    if not (is_binary or is_string):
        raise DataError(
            f"{source.path}: column {text_field!r} has type {column_type}, expected a string column"
        )
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                if value is None:
                    report.add("null_text", example=f"{source.path}: row {index}")
                else:
                    text = _decode(value, 0, f"{source.path} row {index}", report) if is_binary else value
                    yield Document(text, source.path, index)
                index += 1
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{source.path}: cannot read Parquet data near row {index} ({exc})") from exc
