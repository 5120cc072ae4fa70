"""A real English sample corpus with no network: Python's own documentation text.

Sources, in order: the standard library's module/class/function docstrings (read with `ast`, nothing is
imported), the language reference topics shipped in `pydoc_data/topics.py`, the standard library's
comment blocks, then docstrings of the installed site-packages until the size cap is reached. Walks
are sorted, so the same machine produces the same bytes every run. Docstrings that are evaluation texts
of the sample downstream task (`data_pipeline.samples.task`) are left out, wherever they occur, and
counted, so a model pretrained on this corpus is never evaluated on text it has seen.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import multiprocessing
import os
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator

from data_pipeline.errors import DataError
from data_pipeline.integrity import commit_temp, temp_path
from data_pipeline.samples.python_source import (
    BLANK_LINES,
    MIN_WORDS,
    docstrings_of,
    parse_python,
    python_files,
)
from data_pipeline.samples.task import evaluation_texts

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 12_000_000
FILE_BYTES = 2_000_000  # several files, so a parallel build has work units to spread
DOCUMENT_CHARS = 8000  # paragraphs are grouped into documents of about this size

_COMMENT_LINE = re.compile(r"^[ \t]*#[ \t]?(.*)$")


def write_sample_corpus(out_dir: str, *, max_bytes: int | None = None, workers: int = 1) -> dict:
    """Write the sample corpus as .txt files (documents separated by blank lines) into `out_dir`.

    max_bytes: size cap in bytes (None: DEFAULT_MAX_BYTES, about 12 MB). workers: processes that parse
    the source files (the output is the same bytes for any number). Files are named
    sample-000.txt, sample-001.txt, ... of about 2 MB each, each written to a temporary name first.
    Returns {'files': [names], 'documents': n, 'bytes': total bytes written, 'held_out_docstrings':
    docstrings left out because they are sample-task evaluation texts}.

    Raises:
        DataError: max_bytes < 1, or `out_dir` already holds sample-*.txt files.
    """
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if limit < 1:
        raise DataError(f"max_bytes must be positive, got {max_bytes}")
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    os.makedirs(out_dir, exist_ok=True)
    if any(name.startswith("sample-") and name.endswith(".txt") for name in os.listdir(out_dir)):
        raise DataError(f"{out_dir} already holds a sample corpus (sample-*.txt); choose an empty directory")

    held_out = _HeldOut(evaluation_texts())
    writer = _RotatingWriter(out_dir, limit)
    with _docstring_reader(workers) as read, contextlib.closing(_documents(held_out, read)) as documents:
        for document in documents:
            if not writer.write(document):
                break  # leaving the block stops the workers, which parse ahead of the writer
    writer.close()
    stats = {
        "files": writer.names,
        "documents": writer.documents,
        "bytes": writer.total,
        "held_out_docstrings": held_out.skipped,
    }
    logger.info("sample corpus in %s: %s", out_dir, stats)
    return stats


class _RotatingWriter:
    """Appends documents to sample-NNN.txt files, renaming each into place when it is full."""

    def __init__(self, out_dir: str, limit: int) -> None:
        self.out_dir, self.limit = out_dir, limit
        self.names: list[str] = []
        self.documents = self.total = self._file_bytes = 0
        self._fh = None

    def write(self, document: str) -> bool:
        """Append one document; False (nothing written) once it would exceed the cap."""
        data = document.encode("utf-8", "replace") + b"\n\n"
        if self.total + len(data) > self.limit:
            return False
        if self._fh is None or self._file_bytes + len(data) > FILE_BYTES:
            self._open_next()
        self._fh.write(data)
        self._file_bytes += len(data)
        self.total += len(data)
        self.documents += 1
        return True

    def _open_next(self) -> None:
        self.close()
        self.names.append(f"sample-{len(self.names):03d}.txt")
        self._fh = open(temp_path(os.path.join(self.out_dir, self.names[-1])), "wb")  # noqa: SIM115
        self._file_bytes = 0

    def close(self) -> None:
        """Finish the current file: close it and rename it to its final name."""
        if self._fh is not None:
            self._fh.close()
            final = os.path.join(self.out_dir, self.names[-1])
            commit_temp(temp_path(final), final)
            self._fh = None
            logger.info("wrote %s (%d documents, %d bytes so far)", final, self.documents, self.total)


class _HeldOut:
    """Filters out the held-out texts and counts how many it dropped (the count goes into the stats)."""

    def __init__(self, texts: frozenset[str]) -> None:
        self.texts, self.skipped = texts, 0

    def keep(self, text: str) -> bool:
        if text in self.texts:
            self.skipped += 1
            return False
        return True


DocstringReader = Callable[[Iterable[str]], Iterator[list[str]]]


@contextlib.contextmanager
def _docstring_reader(workers: int) -> Iterator[DocstringReader]:
    """A function from paths to their `docstrings_of`, in path order: parsing is most of the corpus's
    cost, so with workers > 1 a process pool parses (in order, chunks of files) while the writer writes."""
    if workers == 1:
        yield lambda paths: map(docstrings_of, paths)
        return
    # Spawned: a caller of this function may run threads (a forked worker would inherit their locks).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # leaving terminates the pool
        yield lambda paths: pool.imap(docstrings_of, paths, chunksize=16)


def _documents(held_out: _HeldOut, read: DocstringReader) -> Iterator[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    stdlib_files = list(python_files(stdlib))
    for docstrings in read(stdlib_files):
        yield from _group([d for d in docstrings if held_out.keep(d)])
    yield from _reference_topics(os.path.join(stdlib, "pydoc_data", "topics.py"))
    for path in stdlib_files:
        yield from _comment_document(path)
    site_packages = sysconfig.get_paths()["purelib"]
    if os.path.isdir(site_packages):
        for docstrings in read(python_files(site_packages, skip=set())):
            yield from _group([d for d in docstrings if held_out.keep(d)])


def _group(paragraphs: list[str]) -> Iterator[str]:
    """Consecutive paragraphs joined by newlines into documents of at most ~DOCUMENT_CHARS characters."""
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        if current and size + len(paragraph) > DOCUMENT_CHARS:
            yield "\n".join(current)
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 1
    if current:
        yield "\n".join(current)


def _reference_topics(path: str) -> Iterator[str]:
    """The language reference topics (pydoc_data/topics.py holds them as a dict literal)."""
    tree = parse_python(path)
    if tree is None:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for value in node.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value.strip():
                    yield from _group(BLANK_LINES.sub("\n", value.value.strip()).split("\n"))


def _comment_document(path: str) -> Iterator[str]:
    """A module's comment blocks of at least a few words, one block per line, in documents of ~8 KB."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return
    blocks, current = [], []
    for line in lines + [""]:
        match = _COMMENT_LINE.match(line)
        text = match.group(1).strip() if match else ""
        if text and not text.startswith(("!", "-*-", "type:", "noqa", "pragma")):
            current.append(text)
        elif current:
            block = " ".join(current)
            if len(block.split()) >= MIN_WORDS:
                blocks.append(block)
            current = []
    yield from _group(blocks)
