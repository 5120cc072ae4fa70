"""Benchmark inputs built with the real `mlm-data` CLI (`python -m data_pipeline`), kept for the next run.

WORK/corpus     `mlm-data sample-corpus` (real text from the Python standard library), unless one is given
WORK/tok-V      `mlm-data tokenizer --kind wordpiece --vocab-size V`, unless one is given
WORK/shards-S   `mlm-data build --seq-len S --mode full-sentences` (rerunning a finished build does
                nothing; a different build in the same dir is refused by mlm-data, naming the dir)
"""

from __future__ import annotations

import os
import subprocess
import sys

from bench.harness import BenchError, child_env


def mlm_data(*args: str) -> None:
    """Run `mlm-data ARGS` (as `python -m data_pipeline`); raises BenchError with its stderr on failure."""
    cmd = [sys.executable, "-m", "data_pipeline", *args]
    result = subprocess.run(cmd, env=child_env("cpu"), capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"mlm-data {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def build_shards(
    work: str,
    seq_len: int,
    *,
    corpus: str | None = None,
    tokenizer: str | None = None,
    vocab_size: int = 30000,
    max_corpus_bytes: int | None = None,
    workers: int | None = None,
) -> str:
    """Full-sentences shards of `seq_len` tokens under `work`; returns their directory.

    corpus / tokenizer: existing dirs to use (default: the sample corpus, capped at max_corpus_bytes,
    and a `vocab_size` WordPiece trained on it, both built under `work` once). workers: build processes
    (default: the CPU count, at most 8). Raises BenchError when a CLI step fails.
    """
    os.makedirs(work, exist_ok=True)
    if corpus is None:
        corpus = os.path.join(work, "corpus")
        done = f"{corpus}.done"  # beside the corpus, not in it: it would be read as an input file
        if not os.path.exists(done):
            cap = [] if max_corpus_bytes is None else ["--max-bytes", str(max_corpus_bytes)]
            mlm_data("sample-corpus", corpus, *cap)
            open(done, "w").close()
    if tokenizer is None:
        tokenizer = os.path.join(work, f"tok-{vocab_size}")
        if not os.path.exists(os.path.join(tokenizer, "tokenizer.json")):
            mlm_data(
                "tokenizer",
                "--input",
                corpus,
                "--kind",
                "wordpiece",
                "--vocab-size",
                str(vocab_size),
                "--out",
                tokenizer,
                "--overwrite",
            )
    out = os.path.join(work, f"shards-{seq_len}")
    workers = workers or min(8, os.cpu_count() or 1)
    mlm_data(
        "build",
        "--input",
        corpus,
        "--tokenizer",
        tokenizer,
        "--out",
        out,
        "--seq-len",
        str(seq_len),
        "--mode",
        "full-sentences",
        "--workers",
        str(workers),
    )
    return out
