"""Text written without spaces between words (Chinese): script detection, word starts, sentence ends.

Whole-word and span masking group tokens by `word_start`, which the tokenizer alone derives from
whitespace: on Chinese that is one word per run of characters (SentencePiece) or one per character
(WordPiece splits every CJK character off). `WordStartEncoder` is a drop-in for
`LoadedTokenizer.encode_batch` that, for each document in Chinese, takes word starts from a word
segmenter instead (Chinese-BERT-wwm style: the characters of one word mask together). The segmenter is
`rjieba` (jieba's dictionary and HMM in Rust; same segmentation as `jieba` on Chinese, 0.3 s to load
instead of 2.4 s, about 16x the speed: docs/data_pipeline.md), an optional extra:
`pip install 'mlm-pretrain[zh]'`. Without it, documents in an unspaced script are counted and
`unsegmented_warning` says what to install.

Also here: CJK-aware sentence ends (`split_sentences`, `last_sentence_end`) and `join_cjk_line_breaks`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator, Mapping

import numpy as np

SEGMENTER = "rjieba"
INSTALL_HINT = "pip install 'mlm-pretrain[zh]' (or: pip install rjieba)"
DETECT_CHARS = 4096  # a document's script is judged on its first characters: cheap, and enough

# Code point ranges of CJK characters in a Chinese text: CJK punctuation (。、「」〇), Han (unified
# ideographs, extension A, B-F, compatibility ideographs), fullwidth forms (，！？).
_CJK_RANGES = (
    (0x3000, 0x303F),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),
    (0x20000, 0x2EBEF),
    (0x2F800, 0x2FA1F),
)
_HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U0002f800-\U0002fa1f"
_KANA = "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
# Scripts written without spaces between words, by the name the counters use: (first, last) code points.
# Only Chinese has a segmenter here; the others are counted as unsegmented.
_UNSPACED_RANGES = (
    ("thai", 0x0E00, 0x0E7F),
    ("lao", 0x0E80, 0x0EFF),
    ("myanmar", 0x1000, 0x109F),
    ("khmer", 0x1780, 0x17FF),
    ("chinese", 0x3007, 0x3007),
    ("japanese", 0x3040, 0x30FF),
    ("japanese", 0x31F0, 0x31FF),
    ("chinese", 0x3400, 0x4DBF),
    ("chinese", 0x4E00, 0x9FFF),
    ("chinese", 0xF900, 0xFAFF),
    ("japanese", 0xFF66, 0xFF9F),
    ("chinese", 0x20000, 0x2EBEF),
    ("chinese", 0x2F800, 0x2FA1F),
)
# Non-ASCII blocks that hold no letters (punctuation, symbols, CJK punctuation, fullwidth ASCII, emoji):
# not counted as letters when judging a script's share.
_NON_LETTER_RANGES = (
    (0x2000, 0x2BFF),
    (0x3000, 0x303F),
    (0xFE30, 0xFE4F),
    (0xFF00, 0xFF65),
    (0x1F000, 0x1FAFF),
)


# Sentence ends. Western marks need whitespace after them (so "3.14" and "e.g.x" stay whole); CJK and
# other scripts' sentence-final marks do not (those scripts put no space after a sentence).
_CJK = f"{_HAN}{_KANA}\u3000-\u303f\uff00-\uffef"
# Closing quotes and brackets that belong to the sentence before them: ASCII and typographic ones after
# Western marks (as before: no braces, so "\N{...} escape" stays whole); for CJK marks also 」』）》〉】.
_WESTERN_CLOSERS = "\"')\\]\u2019\u201d\u00bb"
_CLOSERS = _WESTERN_CLOSERS + "\u300d\u300f\uff09\u300b\u3009\u3011\u3015\u3017\u3019\u301b\uff5d\uff3d"
_END_MARKS = ".!?\u2026\u3002\uff61\uff01\uff1f\uff1b\uff0e\u0964\u0965\u061f\u06d4\u1362\u1367\u104b\n"
_SENTENCE_END = re.compile(
    rf"(?=[{_END_MARKS}])"  # fails fast on the other characters (3x the speed on English text)
    rf"(?:[.!?\u2026][{_WESTERN_CLOSERS}]*\s+"  # Western . ! ? … then whitespace
    rf"|(?:[\u3002\uff61\uff01\uff1f\uff1b]|\uff0e(?![0-9\uff10-\uff19])|\u2026\u2026+"
    rf"|(?<=[{_CJK}])[!?\u2026])[{_CLOSERS}]*\s*"  # 。｡！？；．…… (and ! ? … after CJK), no space needed
    rf"|[\u0964\u0965\u061f\u06d4\u1362\u1367\u104b][{_CLOSERS}]*\s*"  # । ॥ ؟ ۔ ። ፧ ။
    r"|\n\s*\n\s*)"  # blank line
)
_CJK_LINE_BREAK = re.compile(rf"(?<=[{_CJK}])[ \t]*\n[ \t]*(?=[{_CJK}])")


def segmenter_available() -> bool:
    """Whether the Chinese word segmenter (rjieba) is installed."""
    return importlib.util.find_spec(SEGMENTER) is not None


def segmenter_identity() -> dict | None:
    """{'name': 'rjieba', 'version': '0.2.2'} when installed, else None: part of a build's identity,
    since it decides the word starts of Chinese documents."""
    if not segmenter_available():
        return None
    return {"name": SEGMENTER, "version": importlib.metadata.version(SEGMENTER)}


def describe_segmenter(identity: Mapping | None) -> str:
    """'rjieba 0.2.2' for a `segmenter_identity()`, 'no segmenter' for None."""
    return f"{identity['name']} {identity['version']}" if identity else "no segmenter"


def is_segmentation_count(key: str) -> bool:
    """Whether a report count is one of `WordStartEncoder.counts` (documents by word segmentation, not
    documents dropped or repaired)."""
    return key == "segmented_documents" or (key.startswith("unsegmented_") and key.endswith("_documents"))


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


_SCRIPTS = ("chinese", "japanese", "thai", "lao", "khmer", "myanmar")  # ties go to the first


def _edges(ranges) -> np.ndarray:
    """Sorted, disjoint inclusive (low, high) ranges as [low0, high0 + 1, low1, ...] for `_per_range`."""
    return np.array([edge for low, high in ranges for edge in (low, high + 1)], dtype=np.uint32)


_UNSPACED_EDGES = _edges((low, high) for _, low, high in _UNSPACED_RANGES)
_UNSPACED_SCRIPT = np.array([_SCRIPTS.index(script) for script, _, _ in _UNSPACED_RANGES])
_NON_LETTER_EDGES = _edges(_NON_LETTER_RANGES)


def _per_range(points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of `points` fall in each range of `edges` (one sorted search, not a pass per range)."""
    at = np.searchsorted(edges, points, side="right")
    return np.bincount(at[at % 2 == 1] // 2, minlength=len(edges) // 2)


def unspaced_script(text: str) -> str | None:
    """'chinese', 'japanese', 'thai', 'lao', 'khmer' or 'myanmar' when at least 30% of the letters in
    the first DETECT_CHARS characters are of a script written without spaces between words (kana make
    it Japanese, which has no segmenter here); None otherwise. A few microseconds per document."""
    if text.isascii():  # O(1) in CPython
        return None
    points = _code_points(text[:DETECT_CHARS])
    high = points[points >= _UNSPACED_RANGES[0][1]]
    if not len(high):
        return None  # nothing beyond Latin, Greek, Cyrillic, Arabic, Indic...: most documents
    counts = np.bincount(_UNSPACED_SCRIPT, weights=_per_range(high, _UNSPACED_EDGES), minlength=len(_SCRIPTS))
    lower = points | 0x20
    letters = int(np.count_nonzero((lower >= 0x61) & (lower <= 0x7A))) + int(np.count_nonzero(points >= 0xC0))
    letters -= int(_per_range(high, _NON_LETTER_EDGES).sum())  # every non-letter range lies above 0x0E00
    if counts.sum() < 0.3 * letters:
        return None
    chinese, japanese = counts[_SCRIPTS.index("chinese")], counts[_SCRIPTS.index("japanese")]
    if japanese > 0.05 * (chinese + japanese):
        return "japanese"
    return _SCRIPTS[int(np.argmax(counts))]


@functools.cache
def _segmenter():
    import rjieba

    rjieba.cut("")  # loads the dictionary now (about 0.3 s), not inside the first document
    return rjieba


def word_boundaries(text: str) -> np.ndarray:
    """bool per character position 0..len(text): True where the segmenter starts a word (and at the end).

    Raises:
        ModuleNotFoundError: rjieba is not installed (see `segmenter_available`).
    """
    words = _segmenter().cut(text)
    ends = np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)))
    boundaries = np.zeros(len(text) + 1, dtype=bool)
    boundaries[0] = True
    boundaries[ends] = True
    return boundaries


def _cjk_chars(text: str) -> np.ndarray:
    """bool per character: a Han ideograph, CJK punctuation (。、「) or a fullwidth form (，！？)."""
    points = _code_points(text)
    cjk = np.zeros(len(points), dtype=bool)
    for low, high in _CJK_RANGES:
        cjk |= (points >= low) & (points <= high)
    return cjk


def segmented_word_starts(
    text: str, ids: np.ndarray, starts: np.ndarray, offsets: np.ndarray, marker_id: int | None
) -> np.ndarray:
    """word_start flags for the tokens of a Chinese `text`, from the segmenter's word boundaries.

    ids, starts, offsets: the tokenizer's ids, its own word-start flags and each token's start offset
    (characters) in `text`. A token "starts at a segmenter word" when the segmenter starts a word at its
    first character, unless it begins at the same character as the token before (a bare '▁' that
    SentencePiece prepends, the bytes of one character in byte-level BPE) or follows a bare word marker
    `marker_id` ('▁' and its word stay one unit). A token beginning with a CJK character (Han,
    CJK punctuation, fullwidth form) starts a word iff it starts at a segmenter word: WordPiece's
    one-word-per-character is replaced. Any other token (Latin, digits) starts a word if the tokenizer
    says so or if it starts at a segmenter word (Latin right after Chinese, with no space). The first
    token always starts a word. Returns a new uint8 array.
    """
    if len(ids) == 0:
        return starts.copy()
    boundaries = word_boundaries(text)
    inside = offsets < len(text)
    cjk_token = np.zeros(len(ids), dtype=bool)
    cjk_token[inside] = _cjk_chars(text)[offsets[inside]]
    at_word = boundaries[np.minimum(offsets, len(text))]
    at_word[1:] &= offsets[1:] != offsets[:-1]
    is_marker = np.zeros(len(ids), dtype=bool)
    if marker_id is not None:
        is_marker = ids == marker_id
        at_word[1:] &= ~is_marker[:-1]
    flags = np.where(cjk_token & ~is_marker, at_word, starts.astype(bool) | at_word).astype(np.uint8)
    flags[0] = 1
    return flags


class WordStartEncoder:
    """`encode_batch` with segmenter word starts for Chinese documents (a drop-in for
    `LoadedTokenizer.encode_batch`, same ids, same order).

    Documents not in an unspaced script take the tokenizer's fast path unchanged. Chinese documents are
    encoded with offsets and get `segmented_word_starts` when the segmenter is installed (and `segment`
    is not False). `counts` holds 'segmented_documents' and, per script, 'unsegmented_<script>_documents'
    (word starts from the tokenizer only); merge it into the build's report.
    """

    def __init__(self, tokenizer, segment: bool | None = None) -> None:
        """tokenizer: a `LoadedTokenizer`; segment: None = use the segmenter when installed, False = never.

        Raises:
            ModuleNotFoundError: segment=True and rjieba is not installed.
        """
        if segment and not segmenter_available():
            raise ModuleNotFoundError(f"the Chinese word segmenter is not installed: {INSTALL_HINT}")
        self.tokenizer = tokenizer
        self.segment = segmenter_available() if segment is None else segment
        self.counts: dict[str, int] = {}

    @property
    def identity(self) -> dict | None:
        """The segmenter this encoder uses (`segmenter_identity`), or None."""
        return segmenter_identity() if self.segment else None

    def document_scripts(self, documents: list[str]) -> list[str | None]:
        """`unspaced_script` of each document, counted into `counts` (segmented or unsegmented)."""
        scripts = [unspaced_script(doc) for doc in documents]
        for script in scripts:
            if script is None:
                continue
            key = "segmented_documents" if self._segments(script) else f"unsegmented_{script}_documents"
            self.counts[key] = self.counts.get(key, 0) + 1
        return scripts

    def encode_batch(
        self, texts: list[str], scripts: list[str | None] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: (uint32 ids, uint8 word_start), as `LoadedTokenizer.encode_batch`.

        texts: whole documents (their scripts are detected and counted), or pieces of documents such as
        the sentences of NSP/SOP with `scripts` given: the script of each piece's document (from
        `document_scripts`, which counts the documents once), so that a sentence of a Chinese document is
        segmented even when it is mostly Latin.
        """
        if scripts is None:
            scripts = self.document_scripts(texts)
        chinese = [i for i, script in enumerate(scripts) if self._segments(script)]
        if not chinese:
            return self.tokenizer.encode_batch(texts)
        out: list = [None] * len(texts)
        chosen = set(chinese)
        others = [i for i in range(len(texts)) if i not in chosen]
        for i, encoded in zip(others, self.tokenizer.encode_batch([texts[i] for i in others]), strict=True):
            out[i] = encoded
        marker = self.tokenizer.word_marker_id
        with_offsets = self.tokenizer.encode_batch_with_offsets([texts[i] for i in chinese])
        for i, (ids, starts, offsets) in zip(chinese, with_offsets, strict=True):
            out[i] = (ids, segmented_word_starts(texts[i], ids, starts, offsets, marker))
        return out

    def _segments(self, script: str | None) -> bool:
        return script == "chinese" and self.segment


def unsegmented_warning(counts: Mapping[str, int]) -> str | None:
    """The one warning a build prints for documents whose word starts came from the tokenizer only
    (None if there are none), e.g. "1200 documents in Chinese ... install ..."."""
    found = {
        key[len("unsegmented_") : -len("_documents")]: n
        for key, n in counts.items()
        if key.startswith("unsegmented_") and key.endswith("_documents") and n
    }
    if not found:
        return None
    listed = ", ".join(f"{n} in {script.capitalize()}" for script, n in sorted(found.items()))
    message = (
        f"{sum(found.values())} documents in scripts written without spaces ({listed}) got word starts "
        "from the tokenizer only, so whole-word and span masking treat runs of characters as words"
    )
    if "chinese" in found:
        message += f"; for Chinese install the word segmenter: {INSTALL_HINT}"
    return message


def sentence_ends(text: str, start: int = 0) -> Iterator[int]:
    """Positions just past each sentence end at or after `start`: past the final mark and closing
    quotes/brackets, before the whitespace that follows (a blank line ends a sentence where it starts).

    Western . ! ? and … end a sentence only when whitespace follows; 。｡！？；．…… and other scripts'
    final marks (। ؟ ۔ ። ။) do without it, as do ! ? … right after a CJK character.
    """
    for match in _SENTENCE_END.finditer(text, start):
        yield match.start() + len(match.group().rstrip())


def last_sentence_end(text: str, start: int = 0, end: int | None = None) -> int | None:
    """The last of `sentence_ends(text, start)` that is <= `end` (default len(text)), or None."""
    limit = len(text) if end is None else end
    last = None
    for position in sentence_ends(text, start):
        if position > limit:
            break
        last = position
    return last


def split_sentences(text: str) -> list[str]:
    """`text` cut after every sentence end (`sentence_ends`) and blank line; pieces stripped, empty ones
    dropped."""
    out, begin = [], 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[begin : match.end()].strip()
        if piece:
            out.append(piece)
        begin = match.end()
    tail = text[begin:].strip()
    if tail:
        out.append(tail)
    return out


def join_cjk_line_breaks(text: str) -> str:
    """Remove a single line break (and the spaces or tabs around it) between two CJK characters: a
    hard-wrapped CJK paragraph, whose line breaks a tokenizer would otherwise turn into word breaks.
    Paragraph breaks (blank lines) and breaks next to other characters are kept. About 6 MB/s on text
    without CJK: call it for documents `unspaced_script` does not return None for."""
    return _CJK_LINE_BREAK.sub("", text)
