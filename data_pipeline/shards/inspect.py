"""What `mlm-data inspect` prints: a shards directory's summary and decoded sample rows."""

from __future__ import annotations

import os

from data_pipeline.shards.format import ShardReader
from data_pipeline.shards.manifest import Manifest

DOCUMENT_MARK = "‖"  # printed before each packed document but the row's first
PAIR_LABEL_NAMES = {"nsp": "random next", "sop": "swapped"}  # what pair_label 1 means per mode


def summary(shards_dir: str) -> dict:
    """Counts of a shards dir: sequences, tokens, seq_len, vocab_size, mode, format_version (2: rows record
    where documents start, `doc_start`), per-split rows/tokens/shards
    and, for nsp/sop, per split the rows with pair_label 1 (`pair_label_1`: random next / swapped)."""
    m = Manifest.load(shards_dir)
    splits = {
        name: {"sequences": s["rows"], "tokens": s["tokens"], "shards": len(s["shards"])}
        for name, s in m.splits.items()
    }
    if m.mode in PAIR_LABEL_NAMES:
        for name, split in splits.items():
            split["pair_label_1"] = int(ShardReader(shards_dir, name).column("pair_label").sum())
    return {
        "sequences": m.rows,
        "tokens": m.tokens,
        "seq_len": m.seq_len,
        "vocab_size": m.tokenizer["vocab_size"],
        "mode": m.mode,
        "format_version": m.format_version,
        "id_dtype": m.id_dtype,
        "fill_ratio": m.tokens / max(1, m.rows * m.seq_len),
        "splits": splits,
        "counts": m.counts,
    }


def decoded_samples(shards_dir: str, n: int, split: str = "train") -> list[str]:
    """The first `n` rows of `split` decoded token by token; '|' marks a word start, a '‖' piece the start
    of a packed document after the row's first (shards of format 2); pads are omitted."""
    from tokenizers import Tokenizer

    reader = ShardReader(shards_dir, split)
    tok_path = os.path.join(shards_dir, "tokenizer", "tokenizer.json")
    backend = Tokenizer.from_file(tok_path) if os.path.exists(tok_path) else None
    out = []
    for i in range(min(n, len(reader))):
        row = reader[i]
        pieces = []
        for pos in range(int(row["length"])):
            token_id = int(row["input_ids"][pos])
            text = backend.id_to_token(token_id) if backend is not None else str(token_id)
            if pos > 0 and "doc_start" in row and row["doc_start"][pos]:
                pieces.append(DOCUMENT_MARK)
            pieces.append(("|" if row["word_start"][pos] else "") + str(text))
        label = f" pair_label={int(row['pair_label'])}" if reader.has_pairs else ""
        out.append(f"[{split} {i}{label}] " + " ".join(pieces))
    return out
