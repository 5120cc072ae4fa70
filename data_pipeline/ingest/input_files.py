"""Input paths -> the files a build reads (`SourceFile`) and the files it skips (`SkippedFile`), counted.

Files, directories (walked recursively, symlinked directories followed, each directory read once) and
globs expand into a deterministic list. What is not read is never silent: files with an extension we do
not read, hidden (dot) names and FIFOs, sockets and devices (never opened: a FIFO blocks its reader
forever) are listed with their sizes, and `InputSet.check_skipped` fails a build
whose skipped bytes are too large a share of its input. `--ext` (the `extensions` mapping) reads more
extensions; a file without an extension named explicitly is read as text when its content is text.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from data_pipeline.errors import DataError
from data_pipeline.ingest.text_check import looks_like_text

logger = logging.getLogger(__name__)

FORMATS = ("txt", "jsonl", "parquet")
FORMAT_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
COMPRESSION_SUFFIXES = {".gz": "gz", ".bz2": "bz2", ".zst": "zst", ".xz": "xz"}
KNOWN_EXTENSIONS = ".txt, .jsonl or .parquet (.txt/.jsonl optionally + .gz, .bz2, .zst or .xz)"
DEFAULT_MAX_SKIPPED_FRACTION = 0.10
SKIPPED_EXAMPLES = 20  # paths kept in the manifest and named in the error line (the count is exact)
HOW_TO_INCLUDE = (
    "read them with --ext EXT (as text; --ext EXT=jsonl or =parquet for other formats, --ext '' for "
    "files without an extension), or pass --accept-skipped to build without them"
)


@dataclass(frozen=True)
class SourceFile:
    """One input file: `format` 'txt' | 'jsonl' | 'parquet'; `compression` None | 'gz' | 'bz2' | 'zst' |
    'xz'; `size` and `mtime_ns` as stat saw them when the inputs were expanded."""

    path: str
    format: str
    compression: str | None
    size: int
    mtime_ns: int = 0


@dataclass(frozen=True)
class SkippedFile:
    """A file the inputs named or contained that is not read; `reason` 'extension', 'hidden' or
    'not-regular' (a FIFO, socket or device found in a directory or by a glob: never opened)."""

    path: str
    bytes: int
    reason: str

    @property
    def label(self) -> str:
        """The extension (with a compression suffix) that made it unknown, or 'hidden'."""
        if self.reason in ("hidden", "not-regular"):
            return "not a regular file" if self.reason == "not-regular" else "hidden"
        return _suffix_label(self.path) or "(no extension)"


@dataclass
class InputSet:
    """What a list of input paths expands to: the files to read (in order) and every file skipped."""

    files: list[SourceFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def skipped_summary(self) -> dict:
        """JSON-ready counts of what is not read: files, bytes, per extension/reason, first paths."""
        by_label: dict[str, dict[str, int]] = {}
        for s in self.skipped:
            entry = by_label.setdefault(s.label, {"files": 0, "bytes": 0})
            entry["files"] += 1
            entry["bytes"] += s.bytes
        return {
            "files": len(self.skipped),
            "bytes": sum(s.bytes for s in self.skipped),
            "by_extension": dict(sorted(by_label.items())),
            "examples": [s.path for s in self.skipped[:SKIPPED_EXAMPLES]],
        }

    def check_skipped(self, max_fraction: float) -> None:
        """Raise DataError listing the files skipped for their extension when their bytes exceed
        `max_fraction` of all input bytes (read + skipped). Hidden files are counted, never a reason
        to fail: a dot name is how a directory says "not data" (.git, .DS_Store)."""
        unknown = [s for s in self.skipped if s.reason == "extension"]
        skipped_bytes = sum(s.bytes for s in unknown)
        total = skipped_bytes + sum(f.size for f in self.files)
        if not unknown or skipped_bytes <= max_fraction * total:
            return
        counts = Counter(s.label for s in unknown)
        kinds = ", ".join(f"{label} x{n}" for label, n in sorted(counts.items()))
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        names = ", ".join(s.path for s in unknown[:5]) + more
        raise DataError(
            f"{len(unknown)} input files ({skipped_bytes} bytes, {100 * skipped_bytes / total:.1f}% of the "
            f"{total} input bytes; the limit is {100 * max_fraction:g}%) have extensions we do not read "
            f"({kinds}): {names}; {HOW_TO_INCLUDE}"
        )


def parse_extensions(specs: Sequence[str]) -> dict[str, str]:
    """`--ext` values ('.text', 'text', '.json=jsonl', '' for no extension) -> {'.text': 'txt', ...}.

    Raises DataError for an unknown format or an extension that already has a meaning.
    """
    out = {}
    for spec in specs:
        ext, _, fmt = spec.partition("=")
        ext = ext.strip().lower()
        ext = "." + ext.lstrip(".") if ext else ""
        fmt = fmt.strip() or "txt"
        if fmt not in FORMATS:
            raise DataError(f"--ext {spec!r}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if ext in FORMAT_SUFFIXES or ext in COMPRESSION_SUFFIXES:
            raise DataError(f"--ext {spec!r}: {ext} is already read ({KNOWN_EXTENSIONS})")
        out[ext] = fmt
    return out


def detect_format(path: str, extensions: dict[str, str] | None = None) -> tuple[str, str | None] | None:
    """(format, compression) from a file name's suffixes (plus `extensions`), or None when unknown."""
    stem, ext = os.path.splitext(path.lower())
    compression = COMPRESSION_SUFFIXES.get(ext)
    if compression is not None:
        stem, ext = os.path.splitext(stem)
    fmt = FORMAT_SUFFIXES.get(ext) or (extensions or {}).get(ext)
    if fmt is None or (fmt == "parquet" and compression is not None):
        return None  # parquet compresses internally; an outer .gz around it is not something we read
    return fmt, compression


def expand_input_set(paths: Sequence[str], extensions: dict[str, str] | None = None) -> InputSet:
    """Expand files, directories and globs into the files to read and the files skipped.

    Order: the arguments in the order given, each directory walk and glob sorted by path; a file
    reached twice (also through a symlink) keeps its first position. Directory symlinks are followed;
    a directory reached again (a symlink loop) is not walked twice. Unknown extensions and hidden
    names found in a directory or by a glob are skipped and listed in `InputSet.skipped`.

    Raises:
        DataError: no paths; a missing path; a glob matching nothing; an explicitly named file with an
            unknown extension (or, without an extension, content that is not text); an explicitly
            named FIFO, socket or device (never opened; found in a directory it is skipped and
            counted); an unreadable file; or no readable input file at all.
    """
    if not paths:
        raise DataError("no input paths given: pass files, directories or globs of .txt/.jsonl/.parquet")
    found = _Found(extensions or {})
    for raw in paths:
        if glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise DataError(f"input glob {raw!r} matched nothing (working directory: {os.getcwd()})")
            for match in matches:
                if os.path.isdir(match):
                    found.walk(match)
                else:
                    found.add(match, explicit=False)
        elif os.path.isdir(raw):
            found.walk(raw)
        elif os.path.lexists(raw):
            found.add(raw, explicit=True)
        else:
            raise DataError(f"input path {raw!r} does not exist (working directory: {os.getcwd()})")
    inputs = InputSet(files=list(found.files.values()), skipped=found.skipped)
    if inputs.skipped:
        summary = ", ".join(f"{k} x{v['files']}" for k, v in inputs.skipped_summary()["by_extension"].items())
        logger.warning("skipped %d input files: %s", len(inputs.skipped), summary)
    if not inputs.files:
        raise DataError(
            f"no readable input files in {list(paths)}: expected {KNOWN_EXTENSIONS}"
            + (
                f"; skipped {len(inputs.skipped)} files with other extensions: {HOW_TO_INCLUDE}"
                if inputs.skipped
                else ""
            )
        )
    return inputs


def expand_inputs(paths: Sequence[str], extensions: dict[str, str] | None = None) -> list[SourceFile]:
    """The files `expand_input_set` finds to read (skipped files are logged); same errors."""
    return expand_input_set(paths, extensions).files


class _Found:
    """Accumulates files to read (keyed by the path given, deduplicated by real path) and skips."""

    def __init__(self, extensions: dict[str, str]) -> None:
        self.extensions = extensions
        self.files: dict[str, SourceFile] = {}
        self.skipped: list[SkippedFile] = []
        self._skipped_paths: set[str] = set()
        self._real: set[str] = set()
        self._dirs: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> first path it was walked as

    def walk(self, root: str) -> None:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            st = os.stat(dirpath)
            key = (st.st_dev, st.st_ino)
            if key in self._dirs:  # a symlink loop, or a directory linked from two places
                logger.info("not walking %s again: it is %s", dirpath, self._dirs[key])
                dirnames[:] = []
                continue
            self._dirs[key] = dirpath
            for name in sorted(d for d in dirnames if d.startswith(".")):
                self._skip(os.path.join(dirpath, name), "hidden", directory=True)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if name.startswith("."):
                    self._skip(path, "hidden")
                else:
                    self.add(path, explicit=False)

    def add(self, path: str, *, explicit: bool) -> None:
        path = os.path.normpath(path)
        real = os.path.realpath(path)
        if path in self.files or real in self._real:
            return
        kind = special_file_kind(path)
        if kind is not None:  # opening a FIFO blocks until a writer comes: never open one
            if explicit:
                raise DataError(
                    f"{path}: input is a {kind}, not a regular file; reading it could block forever or never "
                    "end: save the text to a file and pass that"
                )
            self._skip(path, "not-regular")
            return
        detected = detect_format(path, self.extensions)
        if detected is None and explicit and not _suffix_label(path):
            detected = ("txt", None) if looks_like_text(path) else None
            if detected is None:
                raise DataError(
                    f"{path}: no extension and its first bytes are not UTF-8 text; convert it to UTF-8, "
                    f"or give it one of the extensions {KNOWN_EXTENSIONS}"
                )
        if detected is None:
            if explicit:
                ext = _format_suffix(path)
                hint = "" if ext in FORMAT_SUFFIXES else f", or pass --ext {ext or repr('')} to read it"
                raise DataError(f"{path}: unknown input extension; expected {KNOWN_EXTENSIONS}{hint}")
            self._skip(path, "extension")
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot stat input file ({exc.strerror}); is it a broken link?") from exc
        if not os.access(path, os.R_OK):
            raise DataError(f"{path}: input file is not readable (permission denied); fix its permissions")
        self._real.add(real)
        self.files[path] = SourceFile(path, detected[0], detected[1], st.st_size, st.st_mtime_ns)

    def _skip(self, path: str, reason: str, directory: bool = False) -> None:
        try:
            size = 0 if directory else os.stat(path).st_size
        except OSError:
            size = 0  # a broken link holds no bytes we could have read
        entry = SkippedFile(path + ("/" if directory else ""), size, reason)
        if entry.path not in self._skipped_paths:  # a dir and a glob reaching it: counted once
            self._skipped_paths.add(entry.path)
            self.skipped.append(entry)


def special_file_kind(path: str) -> str | None:
    """What `path` is when it is no regular file (symlinks followed, nothing opened): 'FIFO (named pipe)',
    'socket', 'character device', 'block device'; None for a regular file, a directory or a path that
    cannot be stat'ed (a broken link: the caller's own error)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _suffix_label(path: str) -> str:
    """'.xz', '.tar.gz', '.text' ... ('' for no extension) of a file name, lowercased."""
    stem, ext = os.path.splitext(os.path.basename(path).lower())
    if ext in COMPRESSION_SUFFIXES:
        return os.path.splitext(stem)[1] + ext
    return ext


def _format_suffix(path: str) -> str:
    """The suffix that decides the format: '.tar' of 'a.tar.gz', '' of 'wiki_00'."""
    stem, ext = os.path.splitext(os.path.basename(path).lower())
    return os.path.splitext(stem)[1] if ext in COMPRESSION_SUFFIXES else ext
