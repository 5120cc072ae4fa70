"""How one input file is cut into work units: fixed byte blocks, the records each block's unit reads,
and the content digest built from the blocks.

A file that can be read from the middle (uncompressed `.txt`, `.jsonl`, `.parquet`) of more than
MIN_PART_BYTES is cut into equal blocks: TARGET_PARTS of them (so that a file of a few MiB still keeps
several workers busy) but none smaller than MIN_PART_BYTES nor larger than MAX_PART_BYTES (so that a
unit's fixed cost stays small and its memory bounded); every other file is one block. Block `k` is the
byte range [k * B, (k + 1) * B) for the file's block size B: the unit of block k hashes exactly those
bytes (so every byte of the file is hashed by one unit) and reads the records that *start* in its block:

- JSONL and one-document-per-line text: a record starts after a line break;
- paragraph text: after a run of blank lines (a blank line of at most MAX_BLANK_RUN spaces or tabs);
- Parquet: the row groups are shared out in order, `k * groups // parts` onwards.

The cut depends only on the file (its size and bytes), never on the worker count, so a build is the
same whatever the parallelism. A file's digest is the sha256 of its bytes when it is one block, else
the sha256 of its blocks' sha256 digests in order (`content_sha256`).
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from data_pipeline.ingest.input_files import SourceFile

MIN_PART_BYTES = 1 << 20  # about half a second of one tokenizer thread: the unit's fixed cost is ~2% of it
MAX_PART_BYTES = 4 << 20
TARGET_PARTS = 16
MAX_BLANK_RUN = 256  # whitespace on a blank line that still makes a cut point (more is simply skipped)
_SCAN_BYTES = 1 << 16
_LINE_START = re.compile(rb"\n")
_PARAGRAPH_START = re.compile(rb"\n[ \t\r\f\v]{0,%d}\n" % MAX_BLANK_RUN)
_BLANK_LINE = re.compile(rb"[ \t\r\f\v]{0,%d}\n" % MAX_BLANK_RUN)


def scheme() -> dict:
    """The cutting rule, for the build identity (another rule cuts the same files into other units)."""
    return {"min_part_bytes": MIN_PART_BYTES, "max_part_bytes": MAX_PART_BYTES, "target_parts": TARGET_PARTS}


def part_count(source: SourceFile) -> int:
    """How many work units (blocks) `source` is read as: 1 unless it is a large uncompressed file."""
    if source.compression is not None:
        return 1
    fewest = -(-source.size // MAX_PART_BYTES)  # blocks of at most MAX_PART_BYTES, at least MIN_PART_BYTES
    return max(1, fewest, min(TARGET_PARTS, source.size // MIN_PART_BYTES))


def block(source: SourceFile, part: int) -> tuple[int, int]:
    """The byte range [start, end) that unit `part` of `source` hashes (the whole file for one part)."""
    parts = part_count(source)
    if parts == 1:
        return 0, source.size
    size = -(-source.size // parts)
    return part * size, min((part + 1) * size, source.size)


def range_sha256(path: str, start: int, end: int) -> str:
    """Hex sha256 of bytes [start, end) of the file at `path` (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            data = fh.read(min(left, 1 << 20))
            if not data:
                break  # the file shrank: the digest differs, which is what the caller checks
            digest.update(data)
            left -= len(data)
    return digest.hexdigest()


def combine_digests(digests: list[str]) -> str:
    """A file's digest from its blocks' digests: the one digest, or the sha256 of all of them."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(b"".join(bytes.fromhex(d) for d in digests)).hexdigest()


def content_sha256(source: SourceFile) -> str:
    """The digest a build records for `source` (see the module docstring), hashing the file now."""
    parts = part_count(source)
    return combine_digests([range_sha256(source.path, *block(source, k)) for k in range(parts)])


def text_range(fh: BinaryIO, source: SourceFile, part: int, paragraphs: bool) -> tuple[int, int]:
    """The bytes [start, end) whose records unit `part` of a text/JSONL file reads (start == end: none).

    `paragraphs`: records are separated by blank lines (else by line breaks). Unit 0 starts at 0; unit k
    at the first record start in its block; it ends where the next unit with a record start begins.
    """
    parts = part_count(source)
    if parts == 1:
        return 0, source.size
    start = 0 if part == 0 else _record_start(fh, source, part, paragraphs)
    if start is None:
        return 0, 0
    for later in range(part + 1, parts):
        end = _record_start(fh, source, later, paragraphs)
        if end is not None:
            return start, end
    return start, source.size


def row_groups(groups: int, part: int, parts: int) -> range:
    """The row groups (of `groups` in the file) unit `part` of `parts` reads."""
    return range(part * groups // parts, (part + 1) * groups // parts)


def _record_start(fh: BinaryIO, source: SourceFile, part: int, paragraphs: bool) -> int | None:
    """The first record start of block `part` (> 0), or None when no record starts there.

    A record starts after a line break (`paragraphs` False) or after a run of blank lines
    (`paragraphs` True) whose first line break lies in [block start - 1, block end - 1): a break just
    before the block starts a record at its first byte.
    """
    first, stop = block(source, part)
    pattern = _PARAGRAPH_START if paragraphs else _LINE_START
    want = _SCAN_BYTES + MAX_BLANK_RUN + 2  # the overlap lets a blank line cut by one read match in the next
    pos = first - 1
    while pos < stop - 1:
        fh.seek(pos)
        data = fh.read(want)
        match = pattern.search(data)
        if match is not None:
            if pos + match.start() >= stop - 1:
                return None
            end = pos + match.end()
            return _skip_blank_lines(fh, end, source.size) if paragraphs else end
        if len(data) < want:
            return None  # the end of the file
        pos += _SCAN_BYTES
    return None


def _skip_blank_lines(fh: BinaryIO, pos: int, size: int) -> int:
    """`pos` moved past any further blank lines (the run of blank lines ends where text begins)."""
    while pos < size:
        fh.seek(pos)
        data = fh.read(MAX_BLANK_RUN + 2)
        match = _BLANK_LINE.match(data)
        if match is None:
            return pos
        pos += match.end()
    return pos
