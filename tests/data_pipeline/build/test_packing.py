"""Packing invariants on synthetic token streams whose ids encode (document, position)."""

import numpy as np
import pytest

from data_pipeline.build import packing
from data_pipeline.errors import DataError
from data_pipeline.tokenizer.load import SpecialIds

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)


def _doc(d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    # ids d*1000 + 10 + k: the document and the position are readable from every id.
    ids = np.arange(n, dtype=np.uint32) + d * 1000 + 10
    ws = (np.arange(n) % 3 == 0).astype(np.uint8)
    return ids, ws


def _pack_full(docs, seq_len, feeds=1):
    packer = packing.FullSentencePacker(seq_len, SPECIAL.cls, SPECIAL.pad, "uint16")
    parts = []
    for chunk in np.array_split(np.arange(len(docs)), feeds):
        ids, ws = packing.join_documents([docs[i] for i in chunk], SPECIAL.sep)
        ds = packing.document_starts([len(docs[i][0]) + 1 for i in chunk])
        parts.append(packer.feed(ids, ws, ds))
    parts.append(packer.finish())
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_full_sentences_rows_reproduce_the_stream_and_pad_only_the_last_row():
    rng = np.random.default_rng(0)
    docs = [_doc(d, int(rng.integers(1, 90))) for d in range(40)]
    rows = _pack_full(docs, seq_len=32, feeds=7)
    assert rows["input_ids"].shape[1] == 32 and rows["input_ids"].dtype == np.uint16
    assert (rows["input_ids"][:, 0] == SPECIAL.cls).all() and (rows["word_start"][:, 0] == 1).all()
    assert (rows["length"][:-1] == 32).all() and 1 < rows["length"][-1] <= 32
    last = int(rows["length"][-1])
    assert (rows["input_ids"][-1, last:] == SPECIAL.pad).all() and (rows["word_start"][-1, last:] == 0).all()
    stream = np.concatenate([r[1:n] for r, n in zip(rows["input_ids"], rows["length"], strict=True)])
    expected = np.concatenate([np.append(ids, SPECIAL.sep) for ids, _ in docs])
    np.testing.assert_array_equal(stream, expected)
    flags = np.concatenate([r[1:n] for r, n in zip(rows["word_start"], rows["length"], strict=True)])
    np.testing.assert_array_equal(flags, np.concatenate([np.append(ws, 1) for _, ws in docs]))


def _document_of_tokens(row: np.ndarray, length: int) -> np.ndarray:
    """Which document (the id's thousands) each token of a packed row belongs to: a [SEP] to the
    document it ends, the [CLS] to the document that follows it."""
    doc = np.where(row[:length] >= 10, row[:length].astype(np.int64) // 1000, -1)
    for p in range(1, length):  # a [SEP] closes the document before it
        if doc[p] < 0:
            doc[p] = doc[p - 1]
    doc[0] = doc[1]
    return doc


def test_full_sentences_doc_start_marks_each_document_and_the_rest_of_a_cut_one():
    rng = np.random.default_rng(3)
    docs = [_doc(d, int(rng.integers(1, 60))) for d in range(40)]
    rows = _pack_full(docs, seq_len=32, feeds=5)
    assert rows["doc_start"].dtype == np.uint8 and rows["doc_start"].shape == rows["input_ids"].shape
    cut_rows = 0
    for ids, starts, length in zip(rows["input_ids"], rows["doc_start"], rows["length"], strict=True):
        doc = _document_of_tokens(ids, int(length))
        expected = np.concatenate([[1], doc[1:] != doc[:-1]]).astype(np.uint8)
        np.testing.assert_array_equal(starts[:length], expected)
        assert not starts[length:].any()
        cut_rows += int(ids[1] % 1000 != 10)  # the row opens with the rest of a document
    assert cut_rows > 5  # documents split across rows do occur here, and start at 0 of the next row


def test_full_sentences_rows_do_not_depend_on_how_the_stream_is_fed():
    docs = [_doc(d, 17 + d) for d in range(30)]
    a, b = _pack_full(docs, 24, feeds=1), _pack_full(docs, 24, feeds=9)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def _pair_docs(n_docs=60, seed=1):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        ids, ws = _doc(d, int(rng.integers(20, 300)))
        cuts = np.sort(rng.choice(np.arange(1, len(ids)), size=min(8, len(ids) - 1), replace=False))
        docs.append(list(zip(np.split(ids, cuts), np.split(ws, cuts), strict=True)))
    return docs


@pytest.mark.parametrize("mode", ["nsp", "sop"])
def test_pair_rows_have_cls_a_sep_b_sep_and_balanced_labels(mode):
    seq_len = 64
    rows = packing.pack_pairs(
        _pair_docs(), mode=mode, seq_len=seq_len, special_ids=SPECIAL, id_dtype="uint16",
        rng=np.random.default_rng(7),
    )
    n = len(rows["length"])
    assert n > 100 and rows["input_ids"].shape == (n, seq_len)
    assert 0.4 < rows["pair_label"].mean() < 0.6
    # A pair is one unit of attention: one document start, at the [CLS].
    assert (rows["doc_start"][:, 0] == 1).all() and rows["doc_start"].sum() == n
    short = 0
    for ids, ws, length, b, label in zip(*(rows[k] for k in packing_keys()), strict=True):
        assert ids[0] == SPECIAL.cls and ids[b - 1] == SPECIAL.sep and ids[length - 1] == SPECIAL.sep
        assert b >= 3 and b < length - 1 and length <= seq_len  # A and B both non-empty
        assert (ids[length:] == SPECIAL.pad).all()
        assert (ids[1 : b - 1] >= 10).all() and (ids[b : length - 1] >= 10).all()  # no specials inside
        assert ws[0] == ws[1] == ws[b] == 1
        a_ids, b_ids = ids[1 : b - 1].astype(int), ids[b : length - 1].astype(int)
        same_doc = a_ids[0] // 1000 == b_ids[0] // 1000
        if mode == "sop" or label == 0:
            assert same_doc
        if mode == "nsp":
            assert same_doc == (label == 0)
            if label == 0:
                assert a_ids.max() < b_ids.min()  # B follows A
        else:
            assert (a_ids.max() < b_ids.min()) == (label == 0)  # label 1: swapped
        short += length < seq_len - 20
    assert short > 0  # the short-sequence probability produces some short rows


def packing_keys():
    return ("input_ids", "word_start", "length", "segment_b_start", "pair_label")


def test_pair_packing_is_a_pure_function_of_the_seed():
    docs = _pair_docs(20, seed=3)
    a = packing.pack_pairs(docs, mode="nsp", seq_len=48, special_ids=SPECIAL, id_dtype="uint32",
                           rng=np.random.default_rng(5))
    b = packing.pack_pairs(docs, mode="nsp", seq_len=48, special_ids=SPECIAL, id_dtype="uint32",
                           rng=np.random.default_rng(5))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(("mode", "seq_len"), [("nsp", 7), ("sop", 5), ("full-sentences", 3)])
def test_seq_len_too_small_for_the_mode_is_refused(mode, seq_len):
    with pytest.raises(DataError, match=f"--seq-len {seq_len} is too small for --mode {mode}"):
        packing.check_seq_len(seq_len, mode)


@pytest.mark.parametrize("seq_len", [packing.MAX_SEQ_LEN + 1, 100_000_000_000])
def test_seq_len_too_large_says_so_with_the_bound(seq_len):
    with pytest.raises(DataError, match=f"--seq-len {seq_len} is too large: at most {packing.MAX_SEQ_LEN}"):
        packing.check_seq_len(seq_len, "full-sentences")
    packing.check_seq_len(packing.MAX_SEQ_LEN, "full-sentences")
