"""File integrity, one copy for `data_pipeline` and `pretrain`: the sha256 of a file, "exists with the
listed size", and write-to-temp-then-rename.

One fsync policy for every file we write under its final name: the temp file is fsynced before the
rename, and its directory after it. The first makes sure the bytes are on disk before the name points
at them (without it a crash can leave a whole-looking file of zeros or of nothing under the final
name, which a later run would trust); the second makes the rename itself survive a crash (otherwise
the old file, or none, comes back, and a manifest or COMPLETE.json could name a file that is gone).
A few fsyncs per file cost little next to the writes they protect, so there is no opt-out.

Temp files are `<path>.tmp` next to the final name (same directory, so the rename is atomic), removed
when the write fails. Stdlib only: `pretrain` imports this, and so may light-weight tools.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
_BLOCK = 1 << 22  # 4 MiB reads: few syscalls, little memory


def temp_path(path: str) -> str:
    """The temp name that `path` is written under before its rename (`<path>.tmp`)."""
    return path + TEMP_SUFFIX


def file_sha256(path: str) -> str:
    """Hex sha256 of the bytes of the file at `path`; raises OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(paths: list[str], threads: int | None = None) -> list[str]:
    """`file_sha256` of each of `paths`, in order, hashed by up to `threads` threads (default: the CPUs,
    at most 8). hashlib releases the GIL on large blocks, so a checkpoint's many large files hash in
    parallel. Raises the first OSError in `paths` order."""
    if threads is None:
        threads = min(8, os.cpu_count() or 1)
    if threads <= 1 or len(paths) <= 1:
        return [file_sha256(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
        return list(pool.map(file_sha256, paths))


def size_problem(path: str, listed: int, listed_by: str = "the listing") -> str | None:
    """None when `path` is a regular file of exactly `listed` bytes, else why not: "missing" or
    "size N bytes, <listed_by> says M" (the caller adds the file name and what to do)."""
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size != listed:
        return f"size {size} bytes, {listed_by} says {listed}"
    return None


def fsync_dir(path: str) -> None:
    """Flush a directory entry (a rename or a new file inside `path`) to disk; a no-op where the
    platform cannot open or fsync directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """fsync a file that a library wrote and closed itself (safetensors, Arrow, shutil copies)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def commit_temp(tmp: str, path: str) -> None:
    """Move the closed, fully written file `tmp` to `path` under the policy above (fsync it, rename,
    fsync the directory). Raises OSError from any of the three."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def commit_temp_dir(tmp_dir: str, path: str) -> None:
    """Move the fully written directory `tmp_dir` to `path` (absent, or an empty directory) under the
    same policy: every file in it and the directory itself fsynced, the rename, then the parent
    directory fsynced. Raises OSError (e.g. when `path` is a non-empty directory)."""
    for root, _, files in os.walk(tmp_dir):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)
    os.replace(tmp_dir, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_quietly(path: str) -> None:
    """Delete `path` if it exists (a temp file after a failed write); never raises FileNotFoundError."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open `<path>.tmp` for writing (`mode` "wb" or "w", text as UTF-8); when the block ends without
    an exception, the file is committed to `path` (see `commit_temp`); when it raises, the temp file is
    removed and `path` is untouched."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', not {mode!r}")
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_atomic(path: str, data: bytes | str) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path` via `<path>.tmp` and a rename (see the module
    docstring); raises OSError, leaving `path` as it was."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_json_atomic(path: str, obj: Any, **dumps_kwargs: Any) -> None:
    """Write `obj` as JSON (`json.dumps(obj, **dumps_kwargs)` plus a final newline) to `path`
    atomically (see `write_atomic`)."""
    write_atomic(path, json.dumps(obj, **dumps_kwargs) + "\n")
