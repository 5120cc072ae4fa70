"""The one error type the data pipeline raises for bad input (the CLI turns it into exit 1), and the one
line an OSError becomes in every CLI (mlm-data and mlm-train)."""

from __future__ import annotations

import errno


class DataError(ValueError):
    """Bad input or a broken build directory. The message names the file/record and what to do."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def is_file_system_error(exc: OSError) -> bool:
    """Whether `exc` is about a file or the disk (it names a file, or says full/not writable): such an
    error is the user's to fix and gets one line; any other OSError (a socket, a bug) keeps its traceback."""
    return bool(exc.filename) or exc.errno in _NO_SPACE + _NOT_WRITABLE


def os_error_line(exc: OSError, out: str | None = None, flag: str = "--out") -> str:
    """One line for an OSError: the file (else the output dir `out`), the system's reason, what to do.

    `flag` names the setting that chooses the output location (`--out`, `run_dir`), for the hint.
    """
    where = f"{exc.filename}: " if exc.filename else f"writing {out}: " if out else ""
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        hint = "the disk is full or a file size limit was hit: free space and rerun (finished work is kept)"
    elif exc.errno in _NOT_WRITABLE:
        hint = f"that location cannot be written: choose a writable {flag}"
    else:
        hint = "nothing was marked complete; fix the cause and rerun"
    return f"{where}{reason}; {hint}"
