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
    of a packed document after the row's first (shards of format 2); pads are omitted. A token shows as its
    vocabulary entry (WordPiece's `##s`, SentencePiece's `▁the`), except in a byte-level BPE (RoBERTa's),
    whose entries are byte symbols (`Ġthe`, `Ã©`): there a token shows as its text (`byte_level_pieces`)."""
    from tokenizers import Tokenizer, decoders

    reader = ShardReader(shards_dir, split)
    tok_path = os.path.join(shards_dir, "tokenizer", "tokenizer.json")
    backend = Tokenizer.from_file(tok_path) if os.path.exists(tok_path) else None
    byte_level = backend is not None and isinstance(backend.decoder, decoders.ByteLevel)
    out = []
    for i in range(min(n, len(reader))):
        row = reader[i]
        ids = [int(t) for t in row["input_ids"][: int(row["length"])]]
        if byte_level:
            shown = byte_level_pieces(backend, ids, row["word_start"])
        else:
            shown = [(p, str(backend.id_to_token(t) if backend else t)) for p, t in enumerate(ids)]
        pieces = []
        for pos, text in shown:
            if pos > 0 and "doc_start" in row and row["doc_start"][pos]:
                pieces.append(DOCUMENT_MARK)
            pieces.append(("|" if row["word_start"][pos] else "") + text)
        label = f" pair_label={int(row['pair_label'])}" if reader.has_pairs else ""
        out.append(f"[{split} {i}{label}] " + " ".join(pieces))
    return out


# A character's UTF-8 bytes span at most 4 byte-level tokens.
_MAX_CHARACTER_BYTES = 4
_SHOWN_WHITESPACE = str.maketrans({" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"})


def byte_level_pieces(backend, ids: list[int], word_start) -> list[tuple[int, str]]:
    """(position of its first token, text) of each piece of a byte-level BPE row `ids`: a token's bytes
    decoded by the tokenizer's ByteLevel decoder, so `Ġthe` shows as `the`. A character whose bytes span
    several tokens (`Ã` `©`) is one piece of those tokens (`é`); a special token shows as it is. On a word
    start (`word_start[pos]`) the leading space is what '|' marks and is dropped; every other space shows as
    '␣', a newline, tab or carriage return as `\\n`, `\\t`, `\\r`, so a row stays one line."""
    special = set(backend.get_added_tokens_decoder())
    pieces: list[tuple[int, str]] = []
    pending: list[int] = []  # positions of tokens whose bytes end inside a character

    def flush() -> None:
        text = backend.decoder.decode([backend.id_to_token(ids[p]) for p in pending])
        if word_start[pending[0]] and text.startswith(" ") and text.strip(" "):
            text = text[1:]
        pieces.append((pending[0], text.translate(_SHOWN_WHITESPACE)))
        pending.clear()

    for pos, token_id in enumerate(ids):
        token = backend.id_to_token(token_id)
        if token_id in special or token is None:
            if pending:
                flush()
            pieces.append((pos, str(token if token is not None else token_id)))
            continue
        pending.append(pos)
        text = backend.decoder.decode([backend.id_to_token(ids[p]) for p in pending])
        if not text.endswith("\ufffd") or len(pending) == _MAX_CHARACTER_BYTES:
            flush()
    if pending:  # a row cut inside a character: its bytes show as U+FFFD
        flush()
    return pieces
