"""`mlm-data inspect`'s sample rows: a byte-level BPE's rows (RoBERTa's `--kind bpe`) show their text, not
the byte symbols of its vocabulary (`Ġ`, `Ã©`); WordPiece rows show their vocabulary entries as before."""

import re

from tokenizers import Tokenizer

from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.shards import ShardReader
from data_pipeline.shards.inspect import byte_level_pieces, decoded_samples

TEXT = "Café naïve — “quoted” 東京 text.\n    indented line\tand a tab.\n\nAnother döcument here."


def _build(tokenizer_dir: str, tmp_path) -> str:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(TEXT, encoding="utf-8")
    out = str(tmp_path / "shards")
    run_build(
        BuildConfig(
            inputs=[str(tmp_path / "corpus")],
            tokenizer=tokenizer_dir,
            out=out,
            seq_len=64,
            validation_fraction=0,
        )
    )
    return out


def test_byte_level_rows_show_their_text(byte_level_bpe_dir, tmp_path):
    shards = _build(byte_level_bpe_dir, tmp_path)
    line = decoded_samples(shards, 1)[0]
    assert line.startswith("[train 0] |<s> |C") and "|</s>" in line
    assert "東" in line and "é" in line and "—" in line and "\\n" in line and "\\t" in line
    assert not re.search("[ĠĊĉÃâæ]", line) and "\n" not in line  # no byte symbol; one line per row

    # The pieces hold every character of the row, the tokenizer's own decoding, one piece per character
    # whose bytes span several tokens (東 is 3 single-byte tokens of this vocabulary).
    backend = Tokenizer.from_file(f"{shards}/tokenizer/tokenizer.json")
    row = ShardReader(shards)[0]
    ids = [int(t) for t in row["input_ids"][: int(row["length"])]]
    pieces = byte_level_pieces(backend, ids, row["word_start"])
    shown = "".join(text for _, text in pieces).replace("␣", "").replace("\\n", "").replace("\\t", "")
    assert shown == re.sub(r"\s", "", backend.decode(ids, skip_special_tokens=False))
    assert [p for p, _ in pieces] == sorted({p for p, _ in pieces}) and len(pieces) < len(ids)
    assert "東" in [text for _, text in pieces]


def test_wordpiece_rows_show_their_vocabulary_entries(wordpiece_tokenizer_dir, tmp_path):
    shards = _build(wordpiece_tokenizer_dir, tmp_path)
    backend = Tokenizer.from_file(f"{shards}/tokenizer/tokenizer.json")
    row = ShardReader(shards)[0]
    entries = [backend.id_to_token(int(t)) for t in row["input_ids"][: int(row["length"])]]
    line = decoded_samples(shards, 1)[0]
    assert line.removeprefix("[train 0] ").replace("|", "").replace("‖ ", "").split(" ") == entries
