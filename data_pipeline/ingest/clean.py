"""Document cleaning: control characters, Unicode normalisation, empty and overlong documents.

Every repair or drop is counted in the build's `BuildReport` (`build_report`), so a build's manifest
can say exactly what happened to the input.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from data_pipeline.ingest.report import BuildReport
from data_pipeline.tokenizer.segment import join_cjk_line_breaks, last_sentence_end, unspaced_script

if TYPE_CHECKING:
    from data_pipeline.ingest.sources import Document

NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD")

# C0 controls except \t \n \r, DEL, C1 controls, the BOM / zero-width no-break space, and lone
# surrogates (JSON "\ud800" escapes decode to them and no tokenizer can encode them).
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ud800-\udfff]+")
_ASCII_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


@dataclass(frozen=True)
class CleanConfig:
    """How documents are cleaned.

    normalization: Unicode normal form applied to every document ('NFC', 'NFKC', 'NFD', 'NFKD' or None).
    max_doc_chars: longer documents are split at paragraph/sentence/whitespace boundaries into pieces
        of at most this many characters (bounds memory and tokenizer time per document).
    min_doc_chars: documents (and pieces) shorter than this after stripping whitespace are dropped.
    """

    normalization: str | None = "NFC"
    max_doc_chars: int = 100_000
    min_doc_chars: int = 1

    def __post_init__(self) -> None:
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS} or None, got {self.normalization!r}"
            )
        if self.min_doc_chars < 1 or self.max_doc_chars < max(self.min_doc_chars, 2):
            raise ValueError(
                "need 1 <= min_doc_chars <= max_doc_chars and max_doc_chars >= 2, "
                f"got {self.min_doc_chars}, {self.max_doc_chars}"
            )


class Cleaner:
    """Turns a raw `Document` into zero or more clean texts, counting every action in the report."""

    def __init__(self, config: CleanConfig, report: BuildReport) -> None:
        """Clean with `config`; counts and examples go to `report`."""
        self.config = config
        self.report = report

    def clean(self, doc: Document) -> list[str]:
        """Return the cleaned text(s) of `doc`: [] if dropped, several pieces if it was overlong.

        Steps: normalise line ends to \\n; remove control characters (keeping \\n and \\t); apply the
        Unicode normal form; join hard-wrapped lines of text in a script without spaces (a line break
        between two CJK characters is not a word break: `segment.join_cjk_line_breaks`); strip; drop
        empty/short documents; split overlong ones.
        """
        counts = self.report.counts
        counts["documents"] = counts.get("documents", 0) + 1
        text = doc.text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text.isascii():  # the common case: bytes.translate is ~10x faster than the regex
            raw = text.encode("ascii")
            kept = raw.translate(None, _ASCII_CONTROL_BYTES)
            removed = len(raw) - len(kept)
            if removed:
                text = kept.decode("ascii")
        else:
            text, removed = _CONTROL_CHARS.subn("", text)
        if removed:
            self.report.add("control_chars_removed", removed, example=doc.location)
        if self.config.normalization is not None and not text.isascii():
            normalized = unicodedata.normalize(self.config.normalization, text)
            if normalized != text:
                self.report.add("unicode_normalized", example=doc.location)
                text = normalized
        if not text.isascii() and unspaced_script(text) is not None:  # a few us; ASCII text never is
            joined = join_cjk_line_breaks(text)
            if joined != text:
                self.report.add("cjk_line_breaks_joined", example=doc.location)
                text = joined
        text = text.strip()
        if len(text) < self.config.min_doc_chars:
            key = "empty_documents" if not text else "short_documents"
            self.report.add(key, example=doc.location)
            return []
        if len(text) <= self.config.max_doc_chars:
            return [text]
        pieces = [
            p for p in split_text(text, self.config.max_doc_chars) if len(p) >= self.config.min_doc_chars
        ]
        self.report.add("overlong_documents_split", example=f"{doc.location} ({len(text)} chars)")
        self.report.add("overlong_pieces", len(pieces))
        return pieces


def split_text(text: str, max_chars: int) -> list[str]:
    """Split `text` into stripped pieces of at most `max_chars` characters.

    Cuts at the last paragraph break in the window, else the last line break, else the last sentence
    end (`segment.sentence_ends`: 。！？ need no space after them), else the last whitespace, else hard
    at `max_chars`; a boundary in the first half of the window is not used (the piece would be too
    short), so pieces are at least about max_chars / 2 long.
    """
    pieces = []
    rest = text
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]  # +1: a boundary right after the window still gives a full piece
        cut = _find_cut(window, max_chars // 2)
        piece = rest[:cut].strip()
        if piece:
            pieces.append(piece)
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _find_cut(window: str, min_cut: int) -> int:
    """Where to cut `window` (len <= max_chars + 1): the piece is window[:cut], so cut <= len - 1."""
    for separator in ("\n\n", "\n"):
        pos = window.rfind(separator, min_cut)
        if pos >= 0:
            return pos
    end = last_sentence_end(window, min_cut, len(window) - 1)  # just past the end mark (and quotes)
    if end is not None:
        return end
    pos = window.rfind(" ", min_cut)
    return pos if pos >= 0 else len(window) - 1
