"""Rows in the shard schema, in memory, and a row source over them (pretrain/data/row_source.py)."""

from __future__ import annotations

import hashlib

import numpy as np

SPECIAL_IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB_SIZE = 500


def make_rows(
    num_rows: int, seq_len: int, *, pairs: bool = False, seed: int = 0, documents: bool = False
) -> dict[str, np.ndarray]:
    """Rows in the shard schema: [CLS] words [SEP] (or [CLS] A [SEP] B [SEP]) then padding.

    Words are 1-3 pieces long (word_start marks the first piece; specials are word starts), lengths vary
    so every batch has padding. `documents`: rows of full-sentence packing, several documents each
    ending in [SEP], with the `doc_start` column of format 2 shards.
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((num_rows, seq_len), dtype=np.uint16)
    word_start = np.zeros((num_rows, seq_len), dtype=np.uint8)
    length = rng.integers(seq_len // 2, seq_len + 1, num_rows).astype(np.int32)
    b_start = np.zeros(num_rows, dtype=np.int32)
    for r in range(num_rows):
        n = int(length[r])
        ids[r, :n] = rng.integers(len(SPECIAL_IDS), VOCAB_SIZE, n)
        starts = rng.random(n) < 0.55
        word_start[r, :n] = starts
        ids[r, 0], ids[r, n - 1], word_start[r, [0, n - 1]] = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"], 1
        if pairs:
            b_start[r] = n // 2
            ids[r, n // 2 - 1], word_start[r, n // 2 - 1 : n // 2 + 1] = SPECIAL_IDS["sep"], 1
    rows = {"input_ids": ids, "word_start": word_start, "length": length}
    if documents:
        doc_start = np.zeros((num_rows, seq_len), dtype=np.uint8)
        doc_start[:, 0] = 1
        for r in range(num_rows):
            n = int(length[r])
            ends = rng.choice(np.arange(2, n - 2), size=min(3, n - 4), replace=False)  # inner [SEP]s
            ids[r, ends], word_start[r, ends], doc_start[r, ends + 1] = SPECIAL_IDS["sep"], 1, 1
        rows["doc_start"] = doc_start
    if pairs:
        rows["segment_b_start"] = b_start
        rows["pair_label"] = rng.integers(0, 2, num_rows).astype(np.int8)
    return rows


class ArrayReader:
    """A row source (pretrain.data.row_source.RowSource) over in-memory rows; records what was taken."""

    def __init__(self, rows: dict[str, np.ndarray], name: str = "the in-memory rows") -> None:
        self.rows = rows
        self.seq_len = rows["input_ids"].shape[1]
        self.has_pairs = "pair_label" in rows
        self.has_document_starts = "doc_start" in rows
        self.vocab_size = VOCAB_SIZE
        self.special_ids = dict(SPECIAL_IDS)
        self.tokenizer_fingerprint = hashlib.sha256(b"test tokenizer").hexdigest()
        self.tokenizer_dir = ""
        self.name = name
        self.taken: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.rows["length"])

    def take(self, indices, epoch: int = 0) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        self.taken.append(idx)
        return {k: v[idx] for k, v in self.rows.items()}

    def data_identity(self) -> str:
        return self.content_identity()

    def content_identity(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.rows):
            digest.update(name.encode() + np.ascontiguousarray(self.rows[name]).tobytes())
        return digest.hexdigest()
