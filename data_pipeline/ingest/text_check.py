"""Is this text? The two rules that keep binary files out of a corpus, in one place.

1. NUL bytes in the first 8 KiB: binary (or UTF-16), refused at once.
2. More than 30% of the decoded characters are U+FFFD (invalid UTF-8) or control characters: a binary
   file without NULs (an image, an archive, a file in another encoding), refused naming the file.
   Checked over the whole file as it is read (`GarbageMeter`), and once the first 8 KiB are in.
"""

from __future__ import annotations

import re

from data_pipeline.errors import DataError

SNIFF_BYTES = 8192
GARBAGE_LIMIT = 0.30
# C0 controls except \t \n \r, and DEL: in UTF-8 each is one byte that no multi-byte sequence contains.
_C0_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")  # U+0080..U+009F, which only binary junk decodes to


def has_nul(head: bytes) -> bool:
    """True when the first SNIFF_BYTES of a file hold a NUL byte (binary, or UTF-16 text)."""
    return b"\x00" in head[:SNIFF_BYTES]


def garbage_chars(raw: bytes, text: str) -> int:
    """Replacement and control characters in `text`, decoded from `raw` (counted on the bytes: fast)."""
    bad = text.count("\ufffd") + len(raw) - len(raw.translate(None, _C0_BYTES))
    if not text.isascii():
        bad += len(_C1_UTF8.findall(raw))
    return bad


class GarbageMeter:
    """Counts garbage characters over a file's decoded pieces; `add` raises once they pass the limit.

    The share is judged from SNIFF_BYTES characters on (a short first read proves nothing) and at
    `finish()` for files shorter than that.
    """

    def __init__(self, path: str) -> None:
        """Meter for the file at `path` (named in the error)."""
        self.path = path
        self.chars = 0
        self.bad = 0

    def add(self, raw: bytes, text: str) -> None:
        """Count one decoded piece; raises DataError when the file is past the limit."""
        self.chars += len(text)
        self.bad += garbage_chars(raw, text)
        if self.chars >= SNIFF_BYTES:
            self._check()

    def finish(self) -> None:
        """Judge what was read (for files shorter than SNIFF_BYTES); raises DataError like `add`."""
        self._check()

    def _check(self) -> None:
        if self.bad > GARBAGE_LIMIT * self.chars:
            raise DataError(
                f"{self.path}: {100 * self.bad / self.chars:.0f}% of the first {self.chars} characters are "
                f"invalid UTF-8 or control characters (the limit is {100 * GARBAGE_LIMIT:.0f}%): not UTF-8 "
                "text (a binary file, or another encoding); convert it to UTF-8 or leave it out"
            )


def looks_like_text(path: str) -> bool:
    """True when the first SNIFF_BYTES of the file have no NUL and pass the garbage limit as UTF-8."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    if has_nul(head):
        return False
    text = head.decode("utf-8", "replace")  # a character cut by the read costs one U+FFFD: noise
    return garbage_chars(head, text) <= GARBAGE_LIMIT * max(1, len(text))
