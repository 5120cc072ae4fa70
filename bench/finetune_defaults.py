"""Benchmark: does `mlm-finetune` with its defaults fine-tune as well as a plain Hugging Face `Trainer`?

The peer is what a new user writes from the HF docs: `AutoModelForSequenceClassification.from_pretrained`,
the tokenizer with `truncation=True` (its own maximum length, at most the position embeddings),
`DataCollatorWithPadding`, and `Trainer`
with `TrainingArguments(num_train_epochs=3)` and every other argument at its default (batch 8, lr 5e-5,
linear decay, no warmup, no weight decay, random batches). Ours is `mlm-finetune MODEL` with its defaults
(plus `--variant NAME="FLAGS"` rows, e.g. the old defaults). Both train on the same rows, a stratified
`--train-size` subset of the offline sample task's training split (`mlm-data sample-task`; seeded), and
are scored on its whole validation split, `--seeds` runs each (the seed sets the head, batch order and
dropout in both). Prints accuracy mean ± std per row and writes WORK/finetune-defaults.json.

    python bench/finetune_defaults.py --model runs/tiny/export --model hf-bert-dir
    python bench/finetune_defaults.py --model M --variant old="--batch-size 32 --warmup-ratio 0.1"
    python bench/finetune_defaults.py --model M --lr 5e-4   # one learning rate for all (a small model's)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile

# Run as a script, bench/ is sys.path[0] and bench/data_pipeline.py would shadow the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def subset_task(work: str, train_size: int, split_seed: int) -> tuple[str, str]:
    """(train.jsonl, validation.jsonl): the sample task under WORK/task, its training split cut to a
    stratified `train_size` rows (pretrain.finetune.data.stratified_split, seeded)."""
    import numpy as np

    from data_pipeline.samples.task import write_sample_task
    from pretrain.finetune.data import stratified_split

    task = os.path.join(work, "task")
    if not os.path.isfile(os.path.join(task, "validation.jsonl")):
        write_sample_task(task)
    with open(os.path.join(task, "train.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    labels = sorted({r["label"] for r in rows})
    ids = np.array([labels.index(r["label"]) for r in rows])
    if train_size < len(rows):
        _, keep = stratified_split(ids, train_size / len(rows), split_seed)
        rows = [rows[i] for i in keep]
    train = os.path.join(work, f"train-{len(rows)}.jsonl")
    with open(train, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return train, os.path.join(task, "validation.jsonl")


def _read(path: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def plain_hf(model_dir: str, train: str, validation: str, seed: int, lr: float | None) -> float:
    """Validation accuracy of the plain HF Trainer fine-tune described above (one seed; `lr`: its
    learning rate instead of the Trainer's default 5e-5)."""
    import numpy as np
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    (texts, labels), (v_texts, v_labels) = _read(train), _read(validation)
    names = sorted(set(labels))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # A real checkpoint's tokenizer knows its maximum length, and so do our exports'; an export made
    # before they recorded model_max_length says 1e30, so the peer also caps at the position embeddings.
    config = AutoConfig.from_pretrained(model_dir)
    longest = min(tokenizer.model_max_length, config.max_position_embeddings)

    def encode(xs, ys):
        enc = tokenizer(xs, truncation=True, max_length=longest)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": names.index(y)} for i, y in enumerate(ys)]

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(names))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, num_train_epochs=3, seed=seed, report_to="none", save_strategy="no",
            disable_tqdm=True, use_cpu=not torch.cuda.is_available(), **({"learning_rate": lr} if lr else {}),
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=args, train_dataset=encode(texts, labels),
            data_collator=DataCollatorWithPadding(tokenizer),
        )  # fmt: skip
        trainer.train()
        output = trainer.predict(encode(v_texts, v_labels))
    return float(np.mean(output.predictions.argmax(-1) == output.label_ids))


def ours(model_dir: str, train: str, validation: str, seeds: int, flags: list[str], work: str) -> list[float]:
    """Validation accuracy per seed of `mlm-finetune MODEL` with `flags` over its defaults."""
    from pretrain.finetune.cli import main as finetune_main

    with tempfile.TemporaryDirectory(dir=work) as out:
        argv = [model_dir, "--train", train, "--validation", validation, "--seeds", str(seeds)]
        if finetune_main([*argv, *flags, "--no-progress", "--out", out]) != 0:
            raise SystemExit(f"mlm-finetune failed on {model_dir}")
        with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
            return [run["accuracy"] for run in json.load(f)["pretrained"]["per_seed"]]


def _cell(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    """Parse arguments, fine-tune every model with the peer and each of our rows, print and save."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="HF model dir (repeatable)")
    parser.add_argument("--work", default=".bench-finetune-defaults")
    parser.add_argument("--train-size", type=int, default=300, help="training rows (the issue's case: 300)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, help="one learning rate for every row (default: each one's own)")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"')
    args = parser.parse_args()
    import torch

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    train, validation = subset_task(work, args.train_size, args.split_seed)
    rows = [("mlm-finetune defaults", [])] + [
        (name, shlex.split(flags)) for name, _, flags in (v.partition("=") for v in args.variant)
    ]
    results: dict = {}
    for model in args.model:
        got = {
            "HF Trainer, plain": [plain_hf(model, train, validation, s, args.lr) for s in range(args.seeds)]
        }
        print(
            f"[finetune-defaults] {model} | HF Trainer, plain: {_cell(got['HF Trainer, plain'])}", flush=True
        )
        lr = ["--lr", str(args.lr)] if args.lr else []
        for name, flags in rows:
            got[name] = ours(model, train, validation, args.seeds, [*lr, *flags], work)
        results[model] = got
        for name, values in got.items():
            print(f"[finetune-defaults] {model} | {name}: {_cell(values)} {values}", flush=True)
    with open(os.path.join(work, "finetune-defaults.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": vars(args), "results": results}, f, indent=2)
    print(f"{'model':40}{'row':34}accuracy (train {args.train_size}, {args.seeds} seeds)")
    for model, got in results.items():
        for name, values in got.items():
            print(f"{os.path.basename(os.path.normpath(model)):40}{name:34}{_cell(values)}")


if __name__ == "__main__":
    main()
