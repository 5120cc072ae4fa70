"""Input files -> documents: stream `.txt` `.jsonl` `.parquet` files (paths expand in `input_files`).

Compressed variants (`.gz` `.bz2` `.zst` `.xz`) are decompressed as a stream; nothing reads a whole file
into memory. Invalid UTF-8 is replaced with U+FFFD and counted in the `BuildReport` with the file and byte
offset; a file that is mostly U+FFFD or control characters is refused (`text_check`). Every bad input
raises `DataError` naming the file (and the line or row where there is one).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from data_pipeline.errors import DataError
from data_pipeline.ingest import file_parts
from data_pipeline.ingest.input_files import SourceFile, expand_input_set, expand_inputs  # noqa: F401 (re-exported)
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.text_check import SNIFF_BYTES, GarbageMeter, has_nul

CHUNK_BYTES = 1 << 20
# A .txt paragraph with no blank line for this many characters is cut at a newline so memory stays
# bounded; the cleaner splits documents far below this size anyway (CleanConfig.max_doc_chars).
MAX_PENDING_CHARS = 8 << 20
INVALID_UTF8_EXAMPLES_PER_CHUNK = 3

_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_LINE_BREAK = re.compile(r"\n")


@dataclass(frozen=True, slots=True)
class Document:
    """One document's raw text, the file it came from and where in that file it begins: `offset` is the
    byte offset of its first byte (in the decompressed stream of a compressed file), or for Parquet its
    row number, as `unit` ('byte' or 'row') says. A worker reading from the middle of a file knows it."""

    text: str
    source: str
    offset: int
    unit: str = "byte"

    @property
    def location(self) -> str:
        """'path: byte 1234' / 'path: row 7', for the cleaner's examples."""
        return f"{self.source}: {self.unit} {self.offset}"


def iter_documents(
    source: SourceFile,
    report: BuildReport,
    *,
    text_field: str = "text",
    one_per_line: bool = False,
    part: int = 0,
) -> Iterator[Document]:
    """Stream the documents of one file, or of one of its work units (raw text; clean them with
    `clean.Cleaner`).

    - `.txt`: documents separated by blank lines, or one per line with `one_per_line=True`.
    - `.jsonl`: one JSON object per line, text in `text_field`.
    - `.parquet`: the `text_field` column, read in record batches (bounded memory).
    Null texts (JSONL null, Parquet null) are skipped and counted as `null_text`. `part`: which unit of
    a file `file_parts` cuts into several (the records that start in that block; the file counts once,
    in part 0).

    Raises:
        DataError: unreadable, binary (NUL bytes in the first 8 KiB) or corrupt/truncated compressed file;
            a JSONL line that is not a JSON object or lacks the field; a Parquet file without the column.
    """
    if part == 0:
        report.add("files")
    if source.format == "parquet":
        yield from _iter_parquet(source, report, text_field, part)
        return
    if source.format not in ("jsonl", "txt"):
        raise DataError(f"{source.path}: unsupported format {source.format!r}")
    start, end = 0, None
    if file_parts.part_count(source) > 1:
        try:
            with open(source.path, "rb") as fh:
                paragraphs = source.format == "txt" and not one_per_line
                start, end = file_parts.text_range(fh, source, part, paragraphs)
        except OSError as exc:
            raise DataError(f"{source.path}: cannot read input file ({exc.strerror or exc})") from exc
        if start == end:
            return
    if source.format == "jsonl":
        yield from _iter_jsonl(source, report, text_field, start, end)
    else:
        yield from _iter_txt(source, report, one_per_line, start, end)


# ---------------------------------------------------------------------------------------------- reading


def _open_binary(source: SourceFile) -> BinaryIO:
    try:
        if source.compression == "gz":
            return gzip.open(source.path, "rb")
        if source.compression == "bz2":
            return bz2.open(source.path, "rb")
        if source.compression == "xz":
            return lzma.open(source.path, "rb")
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


_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def _stream_error(source: SourceFile, offset: int, exc: Exception) -> DataError:
    what = f"corrupt or truncated {source.compression} data" if source.compression else "read error"
    return DataError(f"{source.path}: {what} after {offset} decompressed bytes ({exc}); re-create the file")


def _check_not_binary(source: SourceFile, head: bytes) -> None:
    if has_nul(head):
        raise DataError(
            f"{source.path}: looks binary (NUL bytes in the first {SNIFF_BYTES} bytes); "
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


def _decode(data: bytes, base_offset: int, path: str, report: BuildReport) -> str:
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


def _iter_text_chunks(
    source: SourceFile, report: BuildReport, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, str]]:
    """(byte offset, decoded text) of bytes [start, end) of a file (to its end when `end` is None) in
    ~1 MiB pieces, never splitting a UTF-8 sequence. The binary check and the BOM belong to the file's
    head (start 0); the garbage limit is judged over what is read."""
    offset = start
    carry = b""
    left = None if end is None else end - start
    meter = GarbageMeter(source.path)
    with _open_binary(source) as fh:
        if start:
            fh.seek(start)
        while True:
            want = CHUNK_BYTES if left is None else min(CHUNK_BYTES, left)
            try:
                data = fh.read(want) if want else b""
            except _STREAM_ERRORS as exc:
                raise _stream_error(source, offset, exc) from exc
            if left is not None:
                left -= len(data)
            final = not data
            if offset == 0 and not carry:
                _check_not_binary(source, data)
                if data.startswith(codecs.BOM_UTF8):
                    data, offset = data[3:], 3
            data = carry + data
            cut = len(data) if final else _complete_utf8_prefix(data)
            carry = data[cut:]
            if cut:
                text = _decode(data[:cut], offset, source.path, report)
                meter.add(data[:cut], text)
                yield offset, text
            offset += cut
            if final:
                meter.finish()
                return


def _utf8_length(text: str, ascii_text: bool) -> int:
    return len(text) if ascii_text else len(text.encode("utf-8", "surrogatepass"))


def _iter_txt(
    source: SourceFile, report: BuildReport, one_per_line: bool, start: int, end: int | None
) -> Iterator[Document]:
    separator = _LINE_BREAK if one_per_line else _BLANK_LINES
    pending, at = "", start  # text not yet ended by a separator, and the byte offset of its start
    for chunk_at, chunk in _iter_text_chunks(source, report, start, end):
        if not pending:
            at = chunk_at
        text = pending + chunk
        ascii_text = text.isascii()
        begin = 0
        for match in separator.finditer(text):
            if match.start() > begin:
                yield Document(text[begin : match.start()], source.path, at)
            at += match.end() - begin if ascii_text else _utf8_length(text[begin : match.end()], False)
            begin = match.end()
        pending = text[begin:]
        while len(pending) > MAX_PENDING_CHARS:
            cut = pending.rfind("\n", 0, MAX_PENDING_CHARS) + 1 or MAX_PENDING_CHARS
            yield Document(pending[:cut], source.path, at)
            report.add("txt_long_paragraph_cut", example=f"{source.path}: byte {at}")
            at += _utf8_length(pending[:cut], ascii_text)
            pending = pending[cut:]
    if pending:
        yield Document(pending, source.path, at)


def _iter_jsonl(
    source: SourceFile, report: BuildReport, text_field: str, start: int, end: int | None
) -> Iterator[Document]:
    offset = start
    line_no = 0
    meter = GarbageMeter(source.path)
    with _open_binary(source) as fh:
        if start:
            fh.seek(start)
        while end is None or offset < end:
            try:
                line = fh.readline()
            except _STREAM_ERRORS as exc:
                raise _stream_error(source, offset, exc) from exc
            if not line:
                break
            line_at = offset
            offset += len(line)
            line_no += 1
            if line_at == 0:
                _check_not_binary(source, line)
                if line.startswith(codecs.BOM_UTF8):
                    line, line_at = line[3:], 3
            text_line = _decode(line, line_at, source.path, report)
            meter.add(line, text_line)
            if not text_line.strip():
                continue
            where = f"line {line_no}" if start == 0 else f"the line at byte {line_at}"
            text = _parse_jsonl_record(source.path, where, text_line, text_field)
            if text is None:
                report.add("null_text", example=f"{source.path}: {where}")
                continue
            yield Document(text, source.path, line_at)
    meter.finish()


def _parse_jsonl_record(path: str, where: str, line: str, text_field: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: {where} is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line"
        ) from exc
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} is a JSON {type(record).__name__}, expected an object")
    if text_field not in record:
        keys = ", ".join(sorted(record)[:10])
        raise DataError(
            f"{path}: {where} has no field {text_field!r} (fields: {keys}); "
            "choose the text field with --text-field"
        )
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(f"{path}: {where}: field {text_field!r} is a {type(text).__name__}, not a string")
    return text


def _iter_parquet(source: SourceFile, report: BuildReport, text_field: str, part: int) -> Iterator[Document]:
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
    groups = file_parts.row_groups(parquet.num_row_groups, part, file_parts.part_count(source))
    if not groups:
        return
    index = sum(parquet.metadata.row_group(g).num_rows for g in range(groups.start))  # the first row
    meter = GarbageMeter(source.path)  # typed string columns are text by construction; bytes are not
    try:
        for batch in parquet.iter_batches(batch_size=4096, columns=[text_field], row_groups=list(groups)):
            for value in batch.column(0).to_pylist():
                if value is None:
                    report.add("null_text", example=f"{source.path}: row {index}")
                elif is_binary:
                    text = _decode(value, 0, f"{source.path} row {index}", report)
                    meter.add(value, text)
                    yield Document(text, source.path, index, "row")
                else:
                    yield Document(value, source.path, index, "row")
                index += 1
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{source.path}: cannot read Parquet data near row {index} ({exc})") from exc
    meter.finish()
