"""Benchmark: Chinese word segmenters (jieba vs rjieba) and what segmentation does to word starts.

On real Chinese prose (tests/data_pipeline/fixtures/zh_manpages.txt, repeated --repeat times), in one run:
  (a) per segmenter: dictionary load in a fresh process (import + first cut, best of 3, minus a bare
      interpreter's start), characters per second segmenting paragraph by paragraph (one thread), and
      whether both put the same word boundaries inside runs of Han characters;
  (b) with a WordPiece and a SentencePiece (unigram) tokenizer trained on the fixture: the share of tokens
      flagged word_start by the tokenizer alone and with `segment.WordStartEncoder`, and the encoder's
      throughput against `encode_batch` (one tokenizer thread);
  (c) with those word starts, the share of tokens per row that pretrain's MaskingCollator masks with
      whole-word and with span masking (masking.probability 0.15), on the fixture's documents packed as
      full-sentences rows of 128 tokens ([CLS] + 127), over 20 epochs: mean, standard deviation, and the
      shares of rows with nothing masked and with more than half masked;
  (d) the same on the train rows of shards `mlm-data build` makes of the fixture (seq_len 128, the
      segmenter installed), with each tokenizer.

    pip install -e '.[zh,bench]'        # rjieba, jieba
    python bench/segmenter.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# bench/data_pipeline.py is named like the package: keep bench/ off the import path.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
os.environ.setdefault("RAYON_NUM_THREADS", "1")

FIXTURE = os.path.join(
    os.path.dirname(__file__), "..", "tests", "data_pipeline", "fixtures", "zh_manpages.txt"
)
LOAD = {
    "jieba": "import logging, jieba; jieba.setLogLevel(logging.WARNING); jieba.lcut('预热')",
    "rjieba": "import rjieba; rjieba.cut('预热')",
}
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")


def fresh_process_seconds(code: str) -> float:
    """Best of 3 wall times of `python -c code`, minus the best of 3 for `python -c pass`."""

    def best(snippet: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", snippet], check=True)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(code) - best("pass")


def inner_boundaries(paragraph: str, words: list[str]) -> set[int]:
    """Word boundaries strictly inside runs of Han characters."""
    cuts, position = set(), 0
    for word in words:
        cuts.add(position)
        position += len(word)
    runs = [(m.start(), m.end()) for m in _HAN_RUN.finditer(paragraph)]
    return {c for c in cuts if any(start < c < end for start, end in runs)}


def compare_segmenters(paragraphs: list[str]) -> None:
    import logging

    import jieba
    import rjieba

    jieba.setLogLevel(logging.WARNING)
    cut = {"jieba": jieba.lcut, "rjieba": rjieba.cut}
    chars = sum(map(len, paragraphs))
    words = {}
    for name, function in cut.items():
        function("预热")
        start = time.perf_counter()
        words[name] = [function(p) for p in paragraphs]
        seconds = time.perf_counter() - start
        row = {"segmenter": name, "load_s": round(fresh_process_seconds(LOAD[name]), 3)}
        row["chars_per_s"] = round(chars / seconds)
        print(json.dumps(row))
    agree = total = 0
    for paragraph, a, b in zip(paragraphs, words["jieba"], words["rjieba"], strict=True):
        ours, theirs = inner_boundaries(paragraph, a), inner_boundaries(paragraph, b)
        agree, total = agree + len(ours & theirs), total + len(ours | theirs)
    print(json.dumps({"han_boundaries": total, "same_in_both": agree}))


def packed_rows(tokenizer, encoded: list) -> dict:
    """`encoded` documents packed as full-sentences rows of 128 tokens ([CLS] + 127), in memory."""
    import numpy as np

    from data_pipeline.build.packing import join_documents

    seq = 128
    ids, starts = join_documents(encoded, tokenizer.special_ids.sep)
    n = len(ids) // (seq - 1)
    rows = {
        "input_ids": np.full((n, seq), tokenizer.special_ids.cls, np.int64),
        "word_start": np.ones((n, seq), np.uint8),
        "length": np.full(n, seq),
    }
    rows["input_ids"][:, 1:] = ids[: n * (seq - 1)].reshape(n, seq - 1)
    rows["word_start"][:, 1:] = starts[: n * (seq - 1)].reshape(n, seq - 1)
    return rows


def masked_shares(special_ids: dict, vocab_size: int, rows: dict, label: str) -> None:
    """(c), (d): masked share per row for whole-word and span masking over `rows`."""
    import numpy as np

    from pretrain.config import MaskingConfig
    from pretrain.data.masking import MaskingCollator

    n, seq = rows["input_ids"].shape
    in_row = np.arange(seq)[None, :] < np.asarray(rows["length"])[:, None]
    candidates = (in_row & ~np.isin(rows["input_ids"], list(special_ids.values()))).sum(axis=1)
    for mode in ("whole_word", "span"):
        config = MaskingConfig(probability=0.15, whole_word=True, span=mode == "span")
        collator = MaskingCollator(config, special_ids=special_ids, vocab_size=vocab_size, seed=0)
        shares = []
        for epoch in range(20):
            positions = collator.collate(rows, np.arange(n), epoch)["masked_positions"].numpy()
            shares.append(np.bincount(positions // seq, minlength=n) / candidates)
        shares = np.concatenate(shares)
        row = {"rows": label, "masking": mode, "n_rows": n, "mean": round(float(shares.mean()), 3)}
        row["sd"] = round(float(shares.std()), 3)
        row["rows_none_masked"] = round(float((shares == 0).mean()), 3)
        row["rows_over_half_masked"] = round(float((shares > 0.5).mean()), 3)
        print(json.dumps(row))


def built_shards(work: str) -> None:
    """(d): the same measurement on shards `mlm-data build` made of the fixture (its train rows)."""
    from data_pipeline.build.pipeline import BuildConfig, run_build
    from data_pipeline.shards.format import ShardReader
    from data_pipeline.shards.manifest import Manifest

    for kind in ("wordpiece", "sentencepiece-unigram"):
        out = os.path.join(work, f"shards-{kind}")
        run_build(
            BuildConfig(
                inputs=[FIXTURE],
                tokenizer=os.path.join(work, kind),
                out=out,
                seq_len=128,
                validation_fraction=0.0,
            )
        )
        manifest = Manifest.load(out)
        reader = ShardReader(out, "train")
        rows = reader.take(range(len(reader)))
        label = (
            f"{kind}, mlm-data build shards (segmented {manifest.counts['segmented_documents']} documents)"
        )
        masked_shares(manifest.tokenizer["special_ids"], manifest.tokenizer["vocab_size"], rows, label)


def word_starts(documents: list[str], work: str, repeat: int) -> None:
    import numpy as np

    from data_pipeline.tokenizer.load import load_tokenizer, train_tokenizer
    from data_pipeline.tokenizer.segment import WordStartEncoder

    chars = sum(map(len, documents))
    for kind in ("wordpiece", "sentencepiece-unigram"):
        path = os.path.join(work, kind)
        train_tokenizer([FIXTURE], kind, 1200, path)
        tokenizer = load_tokenizer(path)
        encoder = WordStartEncoder(tokenizer)
        encoder.encode_batch(documents[:1])  # loads the dictionary
        start = time.perf_counter()
        plain = tokenizer.encode_batch(documents)
        plain_s = time.perf_counter() - start
        start = time.perf_counter()
        segmented = encoder.encode_batch(documents)
        segmented_s = time.perf_counter() - start
        row = {
            "tokenizer": f"{kind} 1200 (trained on the fixture)",
            "tokens": int(sum(len(i) for i, _ in plain)),
        }
        row["word_start_tokenizer_only"] = round(float(np.concatenate([s for _, s in plain]).mean()), 3)
        row["word_start_segmented"] = round(float(np.concatenate([s for _, s in segmented]).mean()), 3)
        row["encode_batch_chars_per_s"] = round(chars / plain_s)
        row["word_start_encoder_chars_per_s"] = round(chars / segmented_s)
        print(json.dumps(row))
        fixture_docs = documents[: len(documents) // repeat]
        specials, vocab = tokenizer.special_ids.to_dict(), tokenizer.vocab_size
        for label, encoded in (
            ("tokenizer", tokenizer.encode_batch(fixture_docs)),
            ("segmented", encoder.encode_batch(fixture_docs)),
        ):
            masked_shares(specials, vocab, packed_rows(tokenizer, encoded), f"{kind}, {label} word starts")


def main() -> None:
    """Parse arguments, run (a) to (d), print one JSON line per result."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=20, help="times the fixture is repeated for speed")
    args = parser.parse_args()
    with open(FIXTURE, encoding="utf-8") as fh:
        text = fh.read()
    documents = text.split("\n\n")
    compare_segmenters([p for p in text.split("\n") if p] * args.repeat)
    with tempfile.TemporaryDirectory() as work:
        word_starts(documents * args.repeat, work, args.repeat)
        built_shards(work)


if __name__ == "__main__":
    main()
