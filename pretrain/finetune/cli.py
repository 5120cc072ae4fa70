"""`mlm-finetune MODEL --train FILE ...`: fine-tune a pretrained encoder on a sequence classification task,
or (`--task token-classification`, token_train.py) tag words: NER scored per entity
(`mlm-finetune suite SUITE MODEL...`: a suite of tasks, pretrain/finetune/suite.py).

MODEL is a Hugging Face model dir (an `mlm-train export`, or any BERT checkpoint dir with its tokenizer),
a run dir or a checkpoint dir (its newest valid checkpoint is exported on the fly with
`pretrain.checkpoint.export.export_checkpoint` into a temporary dir). Training uses the classes users know:
`AutoModelForSequenceClassification` and the Hugging Face `Trainer`, one run per seed; with
`--baseline random-init` the same architecture is also trained from random weights with the same budget,
so the report shows what pretraining bought. Everything is local: the hub is never contacted.

Writes OUT/report.json (per model: accuracy, macro-F1 and, for two classes, Matthews correlation, as mean
and sample standard deviation over the seeds, plus the per-seed values) and prints a table. Exit codes: 0
done; 1 bad input (one line `mlm-finetune: error: ...` naming the file, column or dir).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import asdict

from data_pipeline.integrity import write_json_atomic
from pretrain import TOOL_LOG_FORMAT
from pretrain.finetune.data import FinetuneInputError, load_task
from pretrain.finetune.entity_metrics import format_entity_table
from pretrain.finetune.peft_setup import LORA_LR, add_peft_arguments, check_peft_settings, peft_settings
from pretrain.finetune.runs import FinetuneSettings
from pretrain.finetune.token_data import load_token_task
from pretrain.finetune.token_train import run_token_finetuning, token_task_report
from pretrain.finetune.train import resolve_max_seq_len, run_finetuning

log = logging.getLogger("mlm-finetune")

MODELS = ("pretrained", "random_init")


def resolve_model(path: str, scratch_dir: str) -> tuple[str, str]:
    """(HF model dir, how it was found) for MODEL `path`; run and checkpoint dirs are exported into
    `scratch_dir`/model first. Raises FinetuneInputError naming `path` when it is none of these."""
    if not os.path.isdir(path):
        raise FinetuneInputError(
            f"{path}: no such directory (MODEL is a local export, Hugging Face model, run or checkpoint dir; "
            "the hub is never contacted)"
        )
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, "model dir"
    if any(os.path.isfile(os.path.join(path, name)) for name in ("config.yaml", "COMPLETE.json")):
        from pretrain.checkpoint.export import export_checkpoint
        from pretrain.checkpoint.manager import CheckpointError
        from pretrain.config import ConfigError

        out = os.path.join(scratch_dir, "model")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation needs no accelerator
        try:
            export_checkpoint(path, out)
        except (CheckpointError, ConfigError, OSError, ValueError) as exc:
            raise FinetuneInputError(f"{path}: cannot export its checkpoint: {exc}") from None
        log.info("exported the newest valid checkpoint of %s to a temporary model dir", path)
        return out, "exported from a run or checkpoint dir"
    raise FinetuneInputError(
        f"{path}: neither a model dir (config.json), a run dir (config.yaml) nor a checkpoint dir "
        "(COMPLETE.json)"
    )


def format_table(report: dict) -> str:
    """The report's models as a text table: mean ± std of each metric over the seeds."""
    keys = [("accuracy", "accuracy"), ("f1_macro", "macro-F1")]
    if any("mcc_mean" in report.get(m, {}) for m in MODELS):
        keys.append(("mcc", "MCC"))
    lines = [f"{'model':<16}" + "".join(f"{title:>18}" for _, title in keys) + f"{'seeds':>7}"]
    for which in MODELS:
        if which in report:
            r = report[which]
            cells = "".join(f"{r[k + '_mean']:>10.4f} ± {r[k + '_std']:.4f}" for k, _ in keys)
            lines.append(f"{which.replace('_', '-'):<16}{cells}{len(r['per_seed']):>7}")
    lines.append(f"{'majority class':<16}{report['task']['majority_class_accuracy']:>10.4f}")
    counts = report.get("parameters")
    if counts:
        share = 100 * counts["trainable"] / counts["total"]
        lines.append(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({share:.2f}%)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlm-finetune",
        description="Fine-tune a pretrained encoder (export, HF model dir or run dir) on sequence "
        "classification; report accuracy / macro-F1 (MCC for two classes) over seeds; or, with --task "
        "token-classification, tag words and report entity P/R/F1 per type. Build the bundled offline "
        "tasks with `mlm-data sample-task DIR [--task token-classification]`.",
    )
    p.add_argument("model", help="export dir, Hugging Face BERT dir, run dir or checkpoint dir (local only)")
    p.add_argument(
        "--task",
        choices=["sequence-classification", "token-classification"],
        default="sequence-classification",
        help="token-classification: one tag per word (NER, BIO/BIOES), scored per entity with seqeval",
    )
    p.add_argument(
        "--train", required=True, help="CSV, TSV, JSONL or Parquet file (tokens: JSONL, Parquet, CoNLL)"
    )
    p.add_argument("--validation", help="validation file (default: a stratified split of --train)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column", help="second text column (sentence pairs)")
    p.add_argument("--label-column", default="label", help="labels: strings or integers")
    p.add_argument("--tokens-column", default="tokens", help="token task: the list-of-words column")
    p.add_argument("--tags-column", default="tags", help="token task: the list-of-tags column (tag names)")
    p.add_argument("--tag-scheme", default="BIO", help="token task: BIO (IOB2) or BIOES (IOBES)")
    p.add_argument("--seeds", type=int, default=3, help="number of fine-tuning runs per model")
    p.add_argument("--seed-base", type=int, default=0, help="seeds are seed-base .. seed-base+N-1")
    p.add_argument(
        "--baseline", choices=["random-init"], help="also train the same architecture from scratch"
    )
    p.add_argument("--epochs", type=float, default=FinetuneSettings.epochs)
    p.add_argument(
        "--lr",
        type=float,
        help=f"peak learning rate (default {FinetuneSettings.lr:g}; {LORA_LR:g} with --peft lora)",
    )
    p.add_argument("--batch-size", type=int, default=FinetuneSettings.batch_size)
    p.add_argument("--max-seq-len", type=int, help="truncate longer texts (default: the model's maximum)")
    p.add_argument("--weight-decay", type=float, default=FinetuneSettings.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=FinetuneSettings.warmup_ratio)
    p.add_argument(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=FinetuneSettings.group_by_length,
        help="batches of similar text lengths (less padding) instead of uniformly random batches",
    )
    add_peft_arguments(p)
    p.add_argument("--validation-fraction", type=float, default=0.1, help="without --validation")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's; 1 on a busy machine)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="fine-tuning runs trained at once in CPU worker processes, each with --threads threads "
        "(same results as 1; e.g. --jobs 2 --threads 1 on 2 cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="output dir for report.json")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in ("seeds", "batch_size", "max_seq_len", "threads", "jobs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise FinetuneInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.epochs <= 0 or (args.lr is not None and args.lr <= 0):
        raise FinetuneInputError("--epochs and --lr must be > 0")
    if not 0 <= args.warmup_ratio < 1:
        raise FinetuneInputError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.save_model == "adapter" and args.peft == "none":
        raise FinetuneInputError("--save-model adapter needs --peft lora (full fine-tuning has no adapter)")
    if args.save_model == "adapter" and not os.path.isfile(os.path.join(args.model, "config.json")):
        # An adapter names its base model's dir; a run dir's export is temporary and gone afterwards.
        raise FinetuneInputError(
            f"{args.model}: --save-model adapter needs a base model dir that stays, and a run or checkpoint "
            "dir is exported into a temporary one; export it first (mlm-train export RUN OUT) and fine-tune "
            "OUT, or save the full model (--save-model full)"
        )
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise FinetuneInputError(f"--out {args.out} exists and is not a directory")


def _load_data(args: argparse.Namespace, tokens: bool):
    """The task's train and validation data (a token task's with `tokens`), split as the arguments say."""
    files = (args.train, args.validation)
    split = {"validation_fraction": args.validation_fraction, "split_seed": args.split_seed}
    if tokens:
        columns = {"tokens_column": args.tokens_column, "tags_column": args.tags_column}
        return load_token_task(*files, **columns, scheme=args.tag_scheme, **split)
    columns = {
        "text_column": args.text_column,
        "label_column": args.label_column,
        "text_pair_column": args.text_pair_column,
    }
    return load_task(*files, **columns, **split)


def _parameters(summary: dict) -> dict:
    run = summary["per_seed"][0]
    return {"trainable": run["trainable_parameters"], "total": run["total_parameters"]}


def _write_json(path: str, obj: dict) -> None:
    write_json_atomic(path, obj, indent=2)  # a reader never sees half a report


def main(argv: list[str] | None = None) -> int:
    """Run `mlm-finetune` with `argv` (default sys.argv[1:]); returns the exit code (0 / 1).
    `mlm-finetune suite ...` runs a task suite (pretrain/finetune/suite.py)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["suite"]:
        from pretrain.finetune.suite import Finetune
        from pretrain.finetune.suite import main as suite_main

        return suite_main(argv[1:], Finetune(main=main, parser=_parser))
    args = _parser().parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"  # local dirs only, whatever the environment says
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format=TOOL_LOG_FORMAT)
    peft = peft_settings(args)
    default_lr = LORA_LR if args.peft == "lora" else FinetuneSettings.lr
    settings = FinetuneSettings(
        epochs=args.epochs,
        lr=args.lr or default_lr,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        group_by_length=args.group_by_length,
        device=args.device,
        bf16=args.bf16,
        progress=not args.no_progress,
        peft=peft,
        save_model=args.save_model,
        save_dir=os.path.join(os.path.abspath(args.out), "models") if args.save_model else None,
    )
    try:
        _check_args(args)
        check_peft_settings(peft)
        tokens = args.task == "token-classification"
        if tokens and args.jobs > 1:
            raise FinetuneInputError(
                "--jobs > 1 is not supported with --task token-classification; use --jobs 1"
            )
        data = _load_data(args, tokens)
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            raise FinetuneInputError("--device cuda: no CUDA device is visible; use --device auto or cpu")
        if args.bf16 and (args.device == "cpu" or not torch.cuda.is_available()):
            raise FinetuneInputError("--bf16 needs a CUDA device; fine-tune in fp32 on the CPU")
        if args.jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise FinetuneInputError(
                f"--jobs > 1 under a launcher (WORLD_SIZE={os.environ['WORLD_SIZE']}); use --jobs 1"
            )
        if args.jobs > 1 and args.device != "cpu" and torch.cuda.is_available():
            raise FinetuneInputError(
                "--jobs > 1 runs CPU worker processes; on a GPU use --jobs 1 (or --device cpu)"
            )
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)
        try:
            with tempfile.TemporaryDirectory(prefix="mlm-finetune-model-") as scratch:
                model_dir, found = resolve_model(args.model, scratch)
                # Here as well as in the runs: the report names the length they use.
                settings = resolve_max_seq_len(settings, model_dir, source=args.model)
                models = ("pretrained", "random_init") if args.baseline else ("pretrained",)
                seeds = list(range(args.seed_base, args.seed_base + args.seeds))
                if tokens:
                    results, counts = run_token_finetuning(model_dir, data, settings, seeds, models)
                else:
                    results = run_finetuning(model_dir, data, settings, seeds, models, args.jobs)
        finally:
            torch.set_num_threads(threads)  # main() also runs in-process (tests, scripts)
    except FinetuneInputError as exc:
        print(f"mlm-finetune: error: {exc}", file=sys.stderr)
        return 1
    report = {
        "model": os.path.abspath(args.model),
        "model_source": found,
        "task": token_task_report(args, data, counts)
        if tokens
        else {
            "train": os.path.abspath(args.train),
            "validation": data.validation_source,
            "columns": {
                "text": args.text_column,
                "text_pair": args.text_pair_column,
                "label": args.label_column,
            },
            "labels": data.label_names,
            "train_examples": len(data.train),
            "validation_examples": len(data.validation),
            "majority_class_accuracy": data.majority_accuracy(),
        },
        "settings": {**asdict(settings), "seeds": seeds},
        "parameters": _parameters(results["pretrained"]),
        **results,
    }
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank has the same results
        return 0
    os.makedirs(args.out, exist_ok=True)
    _write_json(os.path.join(args.out, "report.json"), report)
    print(format_entity_table(report, MODELS) if tokens else format_table(report))
    print(f"report: {os.path.join(args.out, 'report.json')}")
    return 0
