"""Benchmark: `mlm-data build` against the bare tokenizer on the same cores, per case; optionally against
the Hugging Face run_mlm.py data recipe.

Cases: tokenizer dir x corpus x cores.
  - dirs: "generic" (the --tokenizer dir, e.g. ours: PreTrainedTokenizerFast) and "bert-style" (its
    vocabulary saved by transformers' BertTokenizer as a BERT checkpoint ships it: tokenizer_class
    BertTokenizer, vocab.txt + tokenizer.json with saved truncation and padding);
  - corpora: "files" (the --corpus directory) and "one-file" (the same text as one .txt file, which the
    build cuts into 4 MiB work units);
  - cores: each of --cores (default 1, 2 and all), every process of the case pinned to that many CPUs.
Per case and repeat, adjacent in time:
  (b) the bare tokenizer: `encode_batch_fast` over the cleaned documents in 1 MB batches, in a child
      process with RAYON_NUM_THREADS = cores (reading and cleaning untimed);
  (c) `mlm-data build --seq-len 128 --workers cores` as a child process (wall time, peak RSS of the tree);
  (s) the fixed start-up: the same build of a one-document corpus (interpreter, imports, tokenizer load,
      worker pool, hashing, manifest).
The steady rate of the build is tokens / ((c) - (s)); per case it prints steady / (b): the median and
range over the repeats, and the best steady rate over the best (b) (on a shared machine the fastest of
several runs is the nearest to an idle one); target >= 0.8; (s) target < 1 s. The same ratio per CPU
second (user + system of every process, the build's start-up taken off) is printed too: it moves far
less with the load than wall time does.

    mlm-data sample-corpus /tmp/bench/corpus
    mlm-data tokenizer --input /tmp/bench/corpus --kind wordpiece --vocab-size 30000 --out /tmp/bench/tok
    python bench/data_pipeline.py --corpus /tmp/bench/corpus --tokenizer /tmp/bench/tok --work /tmp/bench/dp
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

# This file is named like the package it measures: run as `python bench/data_pipeline.py`, put the
# checkout's root first on the import path instead of bench/, so `import data_pipeline` finds the package.
if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEQ_LEN = 128
MLM_DATA = os.path.join(os.path.dirname(sys.executable), "mlm-data")


def _pinned(cores: int):
    """preexec_fn: run the child on the first `cores` CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    return lambda: os.sched_setaffinity(0, cpus)


def _env(cores: int) -> dict:
    return {**os.environ, "RAYON_NUM_THREADS": str(cores), "TOKENIZERS_PARALLELISM": str(cores > 1).lower()}


def tokenizer_alone(corpus: str, tokenizer_dir: str) -> dict:
    """(in the child) tokens and seconds of encode_batch_fast over the cleaned documents of `corpus`."""
    from data_pipeline.ingest.clean import CleanConfig, Cleaner
    from data_pipeline.ingest.report import BuildReport
    from data_pipeline.ingest.sources import expand_inputs, iter_documents
    from data_pipeline.tokenizer.load import load_tokenizer

    report = BuildReport()
    cleaner = Cleaner(CleanConfig(), report)
    texts = [t for s in expand_inputs([corpus]) for d in iter_documents(s, report) for t in cleaner.clean(d)]
    backend = load_tokenizer(tokenizer_dir).backend
    batches, batch, chars = [], [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= 1 << 20:
            batches.append(batch)
            batch, chars = [], 0
    batches.append(batch)
    start, cpu = time.perf_counter(), time.process_time()
    tokens = sum(len(e.ids) for b in batches for e in backend.encode_batch_fast(b, add_special_tokens=False))
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def run_baseline(corpus: str, tokenizer_dir: str, cores: int) -> tuple[float, float]:
    """(b): tokens per wall second and per CPU second of the bare tokenizer pinned to `cores` CPUs with
    as many Rayon threads."""
    cmd = [sys.executable, os.path.abspath(__file__), "--baseline-child", corpus, tokenizer_dir]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env=_env(cores), preexec_fn=_pinned(cores)
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["tokens"] / result["seconds"], result["tokens"] / result["cpu"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_build(corpus: str, tokenizer_dir: str, out: str, cores: int) -> tuple[int, float, float, int]:
    """(tokens, wall seconds, CPU seconds, peak RSS bytes) of `mlm-data build --workers cores` (CPU and
    memory over the whole process tree)."""
    import psutil

    from data_pipeline.shards.manifest import Manifest

    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        MLM_DATA,
        "build",
        "--input",
        corpus,
        "--tokenizer",
        tokenizer_dir,
        "--out",
        out,
        "--seq-len",
        str(SEQ_LEN),
        "--mode",
        "full-sentences",
        "--workers",
        str(cores),
    ]
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(cores)
    )
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):  # a process ended between listing and sampling
            peak = max(peak, sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"mlm-data build failed:\n{stderr}")
    return Manifest.load(out).tokens, seconds, _children_cpu() - cpu, peak


def prepare(corpus: str, tokenizer: str, work: str) -> tuple[dict, dict, str]:
    """The case inputs: tokenizer dirs by name, corpora by name, and the one-document corpus."""
    from bench.tokenizer_startup import bert_style_dir

    os.makedirs(work, exist_ok=True)
    bert = os.path.join(work, "bert-style")
    if not os.path.isdir(bert):
        bert_style_dir(tokenizer, bert)
    files = sorted(glob.glob(os.path.join(corpus, "*.txt")))
    one = os.path.join(work, "one-file")
    if not os.path.isdir(one):
        os.makedirs(one)
        with open(os.path.join(one, "all.txt"), "wb") as out:
            for i, path in enumerate(files):
                with open(path, "rb") as fh:
                    out.write((b"\n\n" if i else b"") + fh.read().strip(b"\n"))
    tiny = os.path.join(work, "tiny")
    if not os.path.isdir(tiny):
        os.makedirs(tiny)
        with open(files[0], encoding="utf-8") as fh:
            first = fh.read(20_000).split("\n\n")[0]
        with open(os.path.join(tiny, "tiny.txt"), "w", encoding="utf-8") as fh:
            fh.write(first)
    return {"generic": tokenizer, "bert-style": bert}, {"files": corpus, "one-file": one}, tiny


def run_case(corpus: str, tokenizer: str, tiny: str, work: str, cores: int, repeats: int) -> dict:
    """Repeat (b), (c), (s) for one case; ratios per repeat."""
    rows = []
    for _ in range(repeats):
        baseline, baseline_cpu = run_baseline(corpus, tokenizer, cores)
        tokens, seconds, cpu, peak = run_build(corpus, tokenizer, os.path.join(work, "shards"), cores)
        _, fixed, fixed_cpu, _ = run_build(tiny, tokenizer, os.path.join(work, "tiny-shards"), cores)
        steady = tokens / max(seconds - fixed, 1e-9)
        steady_cpu = tokens / max(cpu - fixed_cpu, 1e-9)
        rows.append(
            {
                "baseline": baseline,
                "build": tokens / seconds,
                "steady": steady,
                "fixed": fixed,
                "fixed_cpu": fixed_cpu,
                "ratio": steady / baseline,
                "seconds": seconds,
                "peak": peak,
                "cpu_ratio": steady_cpu / baseline_cpu,
            }
        )
    summary = {"rows": rows}
    # Best against best: on a shared machine the fastest of several runs is the nearest to an idle one.
    tokens_per_s = max(r["steady"] for r in rows)
    summary["best_ratio"] = tokens_per_s / max(r["baseline"] for r in rows)
    for key in ("ratio", "cpu_ratio"):
        values = [r[key] for r in rows]
        summary.update({key: statistics.median(values), f"{key}_min": min(values), f"{key}_max": max(values)})
    return summary


def run_hf_recipe(files: list[str], tokenizer_dir: str, work: str) -> tuple[int, float]:
    """(a): (tokens, seconds) of the run_mlm.py recipe (2 processes), grouping into SEQ_LEN blocks."""
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
    shutil.rmtree(os.path.join(work, "hf-cache"), ignore_errors=True)
    return grouped["train"].num_rows * SEQ_LEN, seconds


def _case_line(dir_name: str, corpus_name: str, cores: int, case: dict) -> str:
    rows = case["rows"]
    median = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    return (
        f"{dir_name:10} {corpus_name:8} {cores:2} cores: (b) {median('baseline') / 1e6:.2f} M tok/s, "
        f"(c) {median('build') / 1e6:.2f} M tok/s in {median('seconds'):.2f} s, start-up (s) "
        f"{median('fixed'):.2f} s ({median('fixed_cpu'):.2f} CPU s), steady/(b) = {case['ratio']:.2f} "
        f"({case['ratio_min']:.2f}-{case['ratio_max']:.2f}; best/best {case['best_ratio']:.2f}; target >= "
        f"0.8), per CPU second {case['cpu_ratio']:.2f} ({case['cpu_ratio_min']:.2f}-"
        f"{case['cpu_ratio_max']:.2f}), peak RSS {max(r['peak'] for r in rows) / 2**20:.0f} MiB, "
        f"load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    """Run every case and print one line per case (ratio to the bare tokenizer), then (a) if asked."""
    if len(sys.argv) == 4 and sys.argv[1] == "--baseline-child":
        print(json.dumps(tokenizer_alone(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="a directory of .txt files")
    parser.add_argument("--tokenizer", required=True, help="a WordPiece tokenizer dir (e.g. ours, 30k)")
    parser.add_argument("--work", required=True, help="where the bench keeps its dirs (reused)")
    parser.add_argument("--cores", default=None, help="comma-separated core counts (default 1,2,all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dirs", default="generic,bert-style")
    parser.add_argument("--corpora", default="files,one-file")
    parser.add_argument("--hf-recipe", action="store_true", help="also run (a), the run_mlm.py recipe")
    args = parser.parse_args()
    available = len(os.sched_getaffinity(0))
    wanted = [int(c) for c in args.cores.split(",")] if args.cores else [1, 2, available]
    cores = sorted({min(c, available) for c in wanted})
    dirs, corpora, tiny = prepare(args.corpus, args.tokenizer, args.work)
    size = sum(os.path.getsize(f) for f in glob.glob(os.path.join(args.corpus, "*.txt")))
    print(f"corpus {args.corpus}: {size / 1e6:.1f} MB; {available} CPUs; load average {os.getloadavg()}")
    results = {}
    for dir_name in args.dirs.split(","):
        for corpus_name in args.corpora.split(","):
            for n in cores:
                case = run_case(corpora[corpus_name], dirs[dir_name], tiny, args.work, n, args.repeats)
                results[f"{dir_name}/{corpus_name}/{n}"] = case
                print(_case_line(dir_name, corpus_name, n, case), flush=True)
    with open(os.path.join(args.work, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    if args.hf_recipe:
        files = sorted(glob.glob(os.path.join(args.corpus, "*.txt")))
        a_tokens, a_s = run_hf_recipe(files, args.tokenizer, args.work)
        c = results.get(f"generic/files/{min(2, available)}")
        a = a_tokens / a_s
        if c is not None:
            build = statistics.median(x["build"] for x in c["rows"])
            print(f"(a) HF run_mlm recipe: {a / 1e6:.3f} M tokens/s; (c)/(a) = {build / a:.2f} (target >= 3)")


if __name__ == "__main__":
    main()
