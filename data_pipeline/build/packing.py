"""Token ids -> fixed-length rows: `full-sentences` (RoBERTa), `nsp` (BERT) and `sop` (ALBERT).

full-sentences: documents are joined into one stream, each followed by [SEP]; the stream is cut into
rows of [CLS] + (seq_len - 1) tokens, so only the very last row of a split is padded
(`join_documents` + `FullSentencePacker`, vectorised with numpy). `doc_start` marks where each document
(with its [SEP]) starts in a row: the row's first token always, where the [CLS] opens the first document
of the row, or the rest of a document cut off at the end of the previous row; then the first token after
each [SEP] (`document_starts` of the stream). So attention and positions can be kept to one document.

nsp / sop: per document, sentences are gathered into chunks up to a target length (seq_len - 3, or with
probability 0.1 a random shorter target) and cut into segments A and B: [CLS] A [SEP] B [SEP]. NSP takes
B from a random other document of a `DocumentPool` half of the time (label 1): in a build, every document
of the split (`nsp_pairs.CorpusDocuments`), as BERT's create_pretraining_data does; SOP swaps A and B
half of the time (label 1). The random choices come from a generator the caller seeds per work unit
chunk, so the rows do not depend on the worker count. A pair row is one unit of attention (NSP and SOP
need the segments to see each other), so its `doc_start` is 1 at the [CLS] only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.shards.manifest_schema import has_pairs

SHORT_SEQ_PROB = 0.1


def min_seq_len(mode: str) -> int:
    """Smallest usable seq_len: [CLS] + a token + [SEP] (full-sentences), [CLS] A [SEP] B [SEP] (pairs)."""
    return 8 if has_pairs(mode) else 4


MAX_SEQ_LEN = 1 << 20  # a row of more tokens than this is no sequence a BERT is trained on


def check_seq_len(seq_len: int, mode: str) -> None:
    """Raise DataError when `seq_len` is too small for `mode` or larger than MAX_SEQ_LEN."""
    need = min_seq_len(mode)
    if seq_len < need:
        raise DataError(f"--seq-len {seq_len} is too small for --mode {mode}: need at least {need}")
    if seq_len > MAX_SEQ_LEN:
        raise DataError(f"--seq-len {seq_len} is too large: at most {MAX_SEQ_LEN} tokens per row")


def join_documents(docs: list[tuple[np.ndarray, np.ndarray]], sep_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (ids, word_start) of documents, each followed by [SEP] (a word start)."""
    if not docs:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint8)
    lengths = np.fromiter((len(d[0]) + 1 for d in docs), dtype=np.int64, count=len(docs))
    ids = np.empty(int(lengths.sum()), np.uint32)
    ws = np.empty(len(ids), np.uint8)
    ends = np.cumsum(lengths)
    mask = np.ones(len(ids), bool)
    mask[ends - 1] = False
    ids[mask] = np.concatenate([d[0] for d in docs]) if len(ids) > len(docs) else []
    ws[mask] = np.concatenate([d[1] for d in docs]) if len(ids) > len(docs) else []
    ids[ends - 1] = sep_id
    ws[ends - 1] = 1
    return ids, ws


def document_starts(doc_tokens: np.ndarray) -> np.ndarray:
    """The stream's doc_start (uint8, 1 at each document's first token) from the tokens of each document in
    it, [SEP] included (`join_documents` adds one [SEP] to each document)."""
    doc_tokens = np.asarray(doc_tokens, dtype=np.int64)
    starts = np.zeros(int(doc_tokens.sum()), np.uint8)
    starts[np.cumsum(doc_tokens)[:-1]] = 1
    if len(starts):
        starts[0] = 1
    return starts


class FullSentencePacker:
    """Cuts a token stream (fed in pieces) into rows of [CLS] + seq_len - 1 tokens; pads only in `finish`."""

    def __init__(self, seq_len: int, cls_id: int, pad_id: int, id_dtype: str) -> None:
        """Rows of `seq_len` starting with `cls_id`; the final partial row is padded with `pad_id`."""
        self.seq_len = seq_len
        self.cls_id = cls_id
        self.pad_id = pad_id
        self.id_dtype = np.dtype(id_dtype)
        self._carry_ids = np.zeros(0, np.uint32)
        self._carry_ws = np.zeros(0, np.uint8)
        self._carry_ds = np.zeros(0, np.uint8)

    def feed(self, ids: np.ndarray, ws: np.ndarray, ds: np.ndarray) -> dict[str, np.ndarray]:
        """Append stream tokens (ids, word starts, document starts); return the rows completed so far
        (maybe zero rows)."""
        ids = np.concatenate([self._carry_ids, ids])
        ws = np.concatenate([self._carry_ws, ws])
        ds = np.concatenate([self._carry_ds, ds])
        body = self.seq_len - 1
        n = len(ids) // body
        self._carry_ids, self._carry_ws, self._carry_ds = ids[n * body :], ws[n * body :], ds[n * body :]
        cut = [x[: n * body].reshape(n, body) for x in (ids, ws, ds)]
        return self._rows(*cut, body)

    def finish(self) -> dict[str, np.ndarray]:
        """The last, padded row (zero rows if nothing is left)."""
        body = self.seq_len - 1
        k = len(self._carry_ids)
        if k == 0:
            empty = np.zeros((0, body), np.uint8)
            return self._rows(np.zeros((0, body), np.uint32), empty, empty, body)
        ids = np.full((1, body), self.pad_id, np.uint32)
        ws = np.zeros((1, body), np.uint8)
        ds = np.zeros((1, body), np.uint8)
        ids[0, :k], ws[0, :k], ds[0, :k] = self._carry_ids, self._carry_ws, self._carry_ds
        self._carry_ids, self._carry_ws, self._carry_ds = (
            self._carry_ids[:0], self._carry_ws[:0], self._carry_ds[:0]
        )
        return self._rows(ids, ws, ds, k)

    def _rows(self, ids: np.ndarray, ws: np.ndarray, ds: np.ndarray, used: int) -> dict[str, np.ndarray]:
        n = len(ids)
        out_ids = np.empty((n, self.seq_len), self.id_dtype)
        out_ids[:, 0] = self.cls_id
        out_ids[:, 1:] = ids
        out_ws = np.empty((n, self.seq_len), np.uint8)
        out_ws[:, 0] = 1
        out_ws[:, 1:] = ws
        out_ds = np.empty((n, self.seq_len), np.uint8)
        out_ds[:, 1:] = ds
        # The [CLS] belongs to the row's first document: one that starts right after it starts at 0.
        out_ds[:, 0], out_ds[:, 1] = 1, 0
        return {
            "input_ids": out_ids,
            "word_start": out_ws,
            "doc_start": out_ds,
            "length": np.full(n, used + 1, np.int32),
        }


Sentence = tuple[np.ndarray, np.ndarray]


class DocumentPool(Protocol):
    """Where NSP's random-next segments come from: `count` documents, numbered 0..count-1."""

    count: int

    def sentence_count(self, doc: int) -> int:
        """Sentences of document `doc` (0 when it has none)."""

    def tokens(self, doc: int, sentence: int, limit: int) -> Sentence:
        """The first `limit` tokens of document `doc` from sentence `sentence` on."""


class InMemoryDocuments:
    """A `DocumentPool` over a list of documents (lists of sentences) held in memory."""

    def __init__(self, documents: list[list[Sentence]]) -> None:
        """Pool over `documents` (document i of the list is number i)."""
        self.documents = documents
        self.count = len(documents)

    def sentence_count(self, doc: int) -> int:
        """Sentences of document `doc`."""
        return len(self.documents[doc])

    def tokens(self, doc: int, sentence: int, limit: int) -> Sentence:
        """The first `limit` tokens of document `doc` from sentence `sentence` on."""
        taken, size = [], 0
        for piece in self.documents[doc][sentence:]:
            if size >= limit:
                break
            taken.append(piece)
            size += len(piece[0])
        ids, ws = _cat(taken)
        return ids[:limit], ws[:limit]


def sentence_limit(seq_len: int) -> int:
    """Longest sentence (in tokens) pair packing keeps whole: half of a row's text."""
    return max(1, (seq_len - 3) // 2)


def split_long_sentences(doc: list[Sentence], limit: int) -> list[Sentence]:
    """`doc` with sentences longer than `limit` tokens cut into pieces, and empty sentences dropped."""
    out = []
    for ids, ws in doc:
        for start in range(0, len(ids), limit):
            out.append((ids[start : start + limit], ws[start : start + limit]))
    return [s for s in out if len(s[0])]


def pack_pairs(
    documents: list[list[Sentence]],
    *,
    mode: str,
    seq_len: int,
    special_ids,
    id_dtype: str,
    rng: np.random.Generator,
    pool: DocumentPool | None = None,
    first_doc: int = 0,
) -> dict[str, np.ndarray]:
    """Pack documents (lists of (ids, word_start) sentences) into nsp/sop rows with pair labels.

    NSP's random-next segments come from `pool` (default: `documents` themselves), never from the
    document itself, which is number `first_doc + d` of the pool for `documents[d]`.
    Returns columns input_ids, word_start, doc_start (seq_len wide, padded; doc_start 1 at the [CLS]
    only), length, segment_b_start, pair_label.
    """
    max_tokens = seq_len - 3
    documents = [split_long_sentences(doc, sentence_limit(seq_len)) for doc in documents]
    if pool is None:
        pool = InMemoryDocuments(documents)
    rows: list[tuple[Sentence, Sentence, int]] = []
    for d, doc in enumerate(documents):
        target = max_tokens if rng.random() >= SHORT_SEQ_PROB else int(rng.integers(2, max_tokens + 1))
        chunk: list[Sentence] = []
        size = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            size += len(doc[i][0])
            if i == len(doc) - 1 or size >= target:
                i = _emit(chunk, first_doc + d, pool, mode, max_tokens, target, rng, rows, i)
                target = (
                    max_tokens if rng.random() >= SHORT_SEQ_PROB else int(rng.integers(2, max_tokens + 1))
                )
                chunk, size = [], 0
            i += 1
    return _pair_rows(rows, seq_len, special_ids, id_dtype)


def _cat(sentences: list[Sentence]) -> Sentence:
    if not sentences:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint8)
    return np.concatenate([s[0] for s in sentences]), np.concatenate([s[1] for s in sentences])


def _emit(chunk, d, pool, mode, max_tokens, target, rng, rows, i) -> int:
    """Cut `chunk` (of pool document `d`) into A/B, append a row to `rows`; return the sentence index to
    continue from."""
    whole = len(chunk)
    if whole == 1:
        ids, ws = chunk[0]
        if len(ids) < 2:
            return i
        half = len(ids) // 2
        chunk = [(ids[:half], ws[:half]), (ids[half:], ws[half:])]
    a_end = int(rng.integers(1, len(chunk))) if len(chunk) > 2 else 1
    a, b = _cat(chunk[:a_end]), _cat(chunk[a_end:])
    label = 0
    if mode == "nsp" and pool.count > 1 and rng.random() < 0.5:
        other = int(rng.integers(0, pool.count - 1))
        other += other >= d
        sentences = pool.sentence_count(other)
        if sentences:
            start = int(rng.integers(0, sentences))
            b = pool.tokens(other, start, max(1, target - len(a[0])))
            label = 1
            if whole > 1:
                i -= whole - a_end  # the unused sentences start the next chunk
    elif mode == "sop" and rng.random() < 0.5:
        a, b, label = b, a, 1
    a, b = _truncate_pair(a, b, max_tokens)
    rows.append((a, b, label))
    return i


def _truncate_pair(a: Sentence, b: Sentence, max_tokens: int) -> tuple[Sentence, Sentence]:
    """Trim the longer segment from its end until both fit (as BERT's truncate_seq_pair, minus its coin)."""
    la, lb = len(a[0]), len(b[0])
    over = la + lb - max_tokens
    if over <= 0:
        return a, b
    cut_a, cut_b = min(over, max(0, la - lb)), min(over, max(0, lb - la))
    rest = over - cut_a - cut_b  # both now equally long: trim them alternately
    cut_a += (rest + 1) // 2
    cut_b += rest // 2
    return (a[0][: la - cut_a], a[1][: la - cut_a]), (b[0][: lb - cut_b], b[1][: lb - cut_b])


def _pair_rows(rows, seq_len: int, special_ids, id_dtype: str) -> dict[str, np.ndarray]:
    n = len(rows)
    ids = np.full((n, seq_len), special_ids.pad, np.dtype(id_dtype))
    ws = np.zeros((n, seq_len), np.uint8)
    doc_start = np.zeros((n, seq_len), np.uint8)
    doc_start[:, 0] = 1  # the pair is one unit of attention: its segments must see each other
    length = np.empty(n, np.int32)
    b_start = np.empty(n, np.int32)
    label = np.empty(n, np.int8)
    for r, ((a_ids, a_ws), (b_ids, b_ws), lab) in enumerate(rows):
        la, lb = len(a_ids), len(b_ids)
        ids[r, 0] = special_ids.cls
        ids[r, 1 : 1 + la] = a_ids
        ids[r, 1 + la] = special_ids.sep
        ids[r, 2 + la : 2 + la + lb] = b_ids
        ids[r, 2 + la + lb] = special_ids.sep
        ws[r, 0] = ws[r, 1 + la] = ws[r, 2 + la + lb] = 1
        ws[r, 1 : 1 + la] = a_ws
        ws[r, 2 + la : 2 + la + lb] = b_ws
        ws[r, 1] = ws[r, 2 + la] = 1  # each segment starts a word
        length[r], b_start[r], label[r] = 3 + la + lb, 2 + la, lab
    return {
        "input_ids": ids,
        "word_start": ws,
        "doc_start": doc_start,
        "length": length,
        "segment_b_start": b_start,
        "pair_label": label,
    }
