"""Benchmark: the Hugging Face run_mlm.py data recipe vs the tokenizer alone vs `mlm-data build`.

On one corpus and one tokenizer, in one run:
  (a) run_mlm.py: datasets.load_dataset("text") -> map(tokenize, batched, num_proc=2) -> map(group_texts,
      num_proc=2) -> save_to_disk (fresh datasets cache, so nothing is reused);
  (b) the tokenizer alone: tokenizers' encode_batch over the same cleaned documents (1 MB batches, no I/O);
  (c) `mlm-data build --mode full-sentences --seq-len 128 --workers 2` as a child process, with its peak
      RSS (parent + workers, sampled every 20 ms with psutil).
Each rate is tokens produced per second of wall time: (a) tokens in the grouped dataset, (b) tokens
encoded, (c) non-pad tokens in the shards. Prints the rates, (c)/(a), (c)/(b) and the peak RSS, and
(c) once more without the start-up of a fresh interpreter (measured separately), which dominates small
corpora.

    mlm-data sample-corpus /tmp/bench/corpus
    mlm-data tokenizer --input /tmp/bench/corpus --kind wordpiece --vocab-size 30000 --out /tmp/bench/tok
    python bench/data_pipeline.py --corpus /tmp/bench/corpus --tokenizer /tmp/bench/tok
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

# This file is named like the package it measures: run as `python bench/data_pipeline.py`, put the
# checkout's root first on the import path instead of bench/, so `import data_pipeline` finds the package.
if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEQ_LEN = 128


def run_hf_recipe(files: list[str], tokenizer_dir: str, work: str) -> tuple[int, float]:
    """(tokens, seconds) of the run_mlm.py recipe, grouping into SEQ_LEN blocks."""
    os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "hf-cache")
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    start = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=os.path.join(work, "hf-cache"))

    def tokenize(batch):
        return tokenizer(batch["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize, batched=True, num_proc=2, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = len(concatenated["input_ids"]) // SEQ_LEN * SEQ_LEN
        return {k: [t[i : i + SEQ_LEN] for i in range(0, total, SEQ_LEN)] for k, t in concatenated.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=2)
    grouped.save_to_disk(os.path.join(work, "hf-out"))
    seconds = time.perf_counter() - start
    return grouped["train"].num_rows * SEQ_LEN, seconds


def run_tokenizer_alone(files: list[str], tokenizer_dir: str) -> tuple[int, float]:
    """(tokens, seconds) of encode_batch alone over the cleaned documents (read beforehand, untimed)."""
    from data_pipeline.clean import CleanConfig, Cleaner, CleanReport
    from data_pipeline.sources import expand_inputs, iter_documents
    from data_pipeline.tokenizer import load_tokenizer

    report = CleanReport()
    cleaner = Cleaner(CleanConfig(), report)
    texts = [t for s in expand_inputs(files) for d in iter_documents(s, report) for t in cleaner.clean(d)]
    backend = load_tokenizer(tokenizer_dir).backend
    batches, batch, chars = [], [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= 1 << 20:
            batches.append(batch)
            batch, chars = [], 0
    batches.append(batch)
    start = time.perf_counter()
    tokens = sum(len(e.ids) for b in batches for e in backend.encode_batch(b, add_special_tokens=False))
    return tokens, time.perf_counter() - start


def run_mlm_data(corpus: str, tokenizer_dir: str, out: str, workers: int) -> tuple[int, float, int]:
    """(tokens, seconds, peak RSS bytes of the process tree) of `mlm-data build` in a child process."""
    import psutil

    from data_pipeline.manifest import Manifest

    cmd = [os.path.join(os.path.dirname(sys.executable), "mlm-data"), "build", "--input", corpus,
           "--tokenizer", tokenizer_dir, "--out", out, "--seq-len", str(SEQ_LEN),
           "--mode", "full-sentences", "--workers", str(workers)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass  # a process ended between listing and sampling
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"mlm-data build failed:\n{stderr}")
    print(f"  mlm-data: {stdout.strip()}")
    return Manifest.load(out).tokens, seconds, peak


def startup_seconds(tokenizer_dir: str) -> float:
    """Seconds a fresh interpreter needs to import the pipeline and load the tokenizer."""
    code = f"from data_pipeline.tokenizer import load_tokenizer; load_tokenizer({tokenizer_dir!r})"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    """Run (a), (b), (c) and print tokens/s, ratios and peak RSS."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="a directory of .txt files")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer dir (e.g. 30k WordPiece)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.corpus, "*.txt")))
    size = sum(os.path.getsize(f) for f in files)
    print(f"corpus {args.corpus}: {len(files)} files, {size / 1e6:.1f} MB; tokenizer {args.tokenizer}")
    with tempfile.TemporaryDirectory() as work:
        c_tokens, c_s, peak = run_mlm_data(
            args.corpus, args.tokenizer, os.path.join(work, "shards"), args.workers
        )
        b_tokens, b_s = run_tokenizer_alone(files, args.tokenizer)
        a_tokens, a_s = run_hf_recipe(files, args.tokenizer, work)
    startup = startup_seconds(args.tokenizer)
    a, b, c = a_tokens / a_s, b_tokens / b_s, c_tokens / c_s
    print(f"(a) HF run_mlm recipe     {a_tokens:>11,} tokens {a_s:7.1f} s {a / 1e6:6.3f} M tokens/s")
    print(f"(b) tokenizer encode_batch {b_tokens:>10,} tokens {b_s:7.1f} s {b / 1e6:6.3f} M tokens/s")
    print(f"(c) mlm-data build         {c_tokens:>10,} tokens {c_s:7.1f} s {c / 1e6:6.3f} M tokens/s")
    print(f"(c)/(a) = {c / a:.2f} (target >= 3)   (c)/(b) = {c / b:.2f} (target >= 0.8)")
    warm = c_tokens / max(c_s - startup, 1e-9)
    print(
        f"(c) without its {startup:.1f} s start-up (interpreter, imports, tokenizer load): "
        f"{warm / 1e6:.3f} M tokens/s, {warm / b:.2f} x (b)"
    )
    print(f"peak RSS of (c): {peak / 2**20:.0f} MiB (target <= 1536 MiB)")


if __name__ == "__main__":
    main()
