"""Fine-tuning runs for `mlm-finetune` (cli.py is the command line): one run is the HF `Trainer`
with `AutoModelForSequenceClassification` on one seed; `run_finetuning` runs every model x seed, one at a
time or in CPU worker processes (`jobs`), and summarises them.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import replace

import numpy as np

from pretrain import TOOL_LOG_FORMAT
from pretrain.checkpoint.input_length import longest_input
from pretrain.finetune.data import FinetuneInputError, TaskData
from pretrain.finetune.metrics import classification_metrics, summarise
from pretrain.finetune.peft_setup import apply_peft, parameter_counts
from pretrain.finetune.runs import FinetuneSettings, run_in_turn, run_record, save_run, train_run

log = logging.getLogger("mlm-finetune")


# Files one of which a tokenizer dir holds. Without any, transformers 5 quietly builds an empty
# vocabulary of five special tokens from config.json alone: every word would become [UNK].
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def load_tokenizer(model_dir: str, source: str):
    """The model dir's tokenizer (local files only). Raises FinetuneInputError naming `source` when the
    dir has no tokenizer files, they do not load, or they hold more ids than the model's vocabulary."""
    from transformers import AutoConfig, AutoTokenizer

    if not any(os.path.isfile(os.path.join(model_dir, name)) for name in TOKENIZER_FILES):
        raise FinetuneInputError(
            f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); save the tokenizer "
            "with the model (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        vocab_size = AutoConfig.from_pretrained(model_dir, local_files_only=True).vocab_size
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinetuneInputError(f"{source}: cannot load its tokenizer ({first})") from None
    if len(tokenizer) > vocab_size:
        raise FinetuneInputError(
            f"{source}: the tokenizer has {len(tokenizer)} ids but the model's vocab_size is {vocab_size}; "
            "they do not belong together"
        )
    return tokenizer


def model_max_length(model_dir: str, tokenizer) -> int:
    """The longest input the model in `model_dir` takes: its tokenizer's `model_max_length`, at most what
    its positions allow (`longest_input`; an HF dir whose tokenizer sets no limit has transformers' 1e30)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    positions = longest_input(config)
    return int(
        tokenizer.model_max_length if positions is None else min(tokenizer.model_max_length, positions)
    )


def resolve_max_seq_len(
    settings: FinetuneSettings, model_dir: str, tokenizer=None, source: str | None = None
) -> FinetuneSettings:
    """`settings` with `max_seq_len` set: as given, or for None the longest input the model in `model_dir`
    takes (`model_max_length`). `tokenizer` is the model's; when needed and not given it is loaded here,
    errors naming `source` (default `model_dir`). The one place None becomes a length: the CLI applies it
    (its report names the length) and so do the task runs (for any other caller)."""
    if settings.max_seq_len is not None:
        return settings
    if tokenizer is None:
        tokenizer = load_tokenizer(model_dir, source or model_dir)
    return replace(settings, max_seq_len=model_max_length(model_dir, tokenizer))


class _Encoded:
    """A tokenised split as a map-style dataset of dicts (input_ids, attention_mask, ..., labels)."""

    def __init__(self, tokenizer, split, max_seq_len: int) -> None:
        self.features = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_seq_len)
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        item["labels"] = int(self.labels[i])
        return item


def build_model(
    model_dir: str,
    data,
    which: str,
    seed: int,
    announce: bool,
    auto_class: str = "AutoModelForSequenceClassification",
):
    """The `auto_class` model (a transformers `Auto*ForXxx` name) of `model_dir` with a fresh head of
    len(data.label_names) outputs, seeded: pretrained weights, or all random for `which` random_init;
    returned with the names of the parameters that start fresh (none for random_init). Raises
    FinetuneInputError when the dir does not load as that class."""
    import transformers
    from transformers import AutoConfig

    auto = getattr(transformers, auto_class)

    names = data.label_names
    kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    transformers.set_seed(seed)  # the classifier head's (and the baseline's) initial weights
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # we say below what starts fresh, in one line
    transformers.logging.disable_progress_bar()
    try:
        if which == "random_init":
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True, **kwargs)
            # Nothing counts as fresh: under LoRA the whole random encoder stays frozen, pooler included.
            return auto.from_config(config), set()
        model, info = auto.from_pretrained(
            model_dir, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError) as exc:  # unreadable weights, unknown model type, remote code asked for
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        task = auto_class.removeprefix("AutoModelFor").removesuffix("Classification").lower()
        raise FinetuneInputError(f"{model_dir}: cannot load as a {task} classifier: {first}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    missing = set(info["missing_keys"]) | {k for k, *_ in info.get("mismatched_keys", [])}
    if announce:
        if any("pooler" in k for k in missing):
            log.info(
                "%s has no pooler (an MLM-only export): the pooler and the classifier head start from "
                "random weights",
                model_dir,
            )
        elif missing:
            log.info("the classifier head starts from random weights (%s)", ", ".join(sorted(missing)))
    return model, missing


def prepared_model(
    model_dir: str,
    data,
    which: str,
    seed: int,
    announce: bool,
    settings: FinetuneSettings,
    auto_class: str = "AutoModelForSequenceClassification",
):
    """`build_model`'s model wrapped for `settings.peft` (LoRA or none), with its parameter counts
    ({"trainable", "total"}); every task's run starts from it."""
    model, fresh = build_model(model_dir, data, which, seed, announce, auto_class)
    model = apply_peft(model, settings.peft, fresh)  # before any training: the seed also sets LoRA's init
    parameters = parameter_counts(model)
    if announce and settings.peft.method != "none":
        log.info(
            "LoRA: %d of %d parameters trainable (%.2f%%)",
            parameters["trainable"],
            parameters["total"],
            100 * parameters["trainable"] / parameters["total"],
        )
    return model, parameters


def finetune_once(
    model_dir,
    tokenizer,
    data: TaskData,
    encoded,
    settings: FinetuneSettings,
    which: str,
    seed: int,
    announce: bool = False,
    title: str | None = None,
) -> dict:
    """Fine-tune one model (`which`: pretrained or random_init) with `seed`; returns its metrics on the
    validation split plus seed, train_loss and train_seconds. Raises FinetuneInputError when the model
    does not load; `title` is printed (stderr) once it did."""
    from transformers import DataCollatorWithPadding

    model, parameters = prepared_model(model_dir, data, which, seed, announce, settings)
    collator = DataCollatorWithPadding(tokenizer)
    trainer, training = train_run(model, settings, seed, encoded["train"], collator, title)
    output = trainer.predict(encoded["validation"])
    save_run(model, tokenizer, settings, which, seed)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    # label_ids, not data.validation.labels: the length-grouped sampler also reorders the evaluation set.
    metrics = classification_metrics(output.label_ids, np.asarray(logits).argmax(-1), len(data.label_names))
    return run_record(seed, metrics, training, parameters)


_SPLITS = ("train", "validation")


def _encode_splits(tokenizer, data: TaskData, max_seq_len: int) -> dict:
    return {split: _Encoded(tokenizer, getattr(data, split), max_seq_len) for split in _SPLITS}


def run_finetuning(
    model_dir: str,
    data: TaskData,
    settings: FinetuneSettings,
    seeds: list[int],
    models: tuple[str, ...] = ("pretrained",),
    jobs: int = 1,
) -> dict:
    """Fine-tune each of `models` once per seed; returns {model: summary} (see finetune_metrics.summarise).

    jobs > 1 (CPU only) trains that many runs at once in worker processes, each with this process's torch
    thread count: every run is seeded on its own, so the results are those of jobs=1, bit for bit.
    """
    tokenizer = load_tokenizer(model_dir, model_dir)  # also with jobs > 1: a bad dir fails before any worker
    settings = resolve_max_seq_len(settings, model_dir, tokenizer)
    runs = [(which, seed) for which in models for seed in seeds]
    if jobs <= 1:
        encoded = _encode_splits(tokenizer, data, settings.max_seq_len)
        run_once = functools.partial(finetune_once, model_dir, tokenizer, data, encoded, settings)
        results = run_in_turn(runs, run_once, _log_run)
    else:
        results = _run_in_workers(runs, min(jobs, len(runs)), (model_dir, data, settings), settings.progress)
    return {which: summarise([results[which, seed] for seed in seeds]) for which in models}


def _log_run(which: str, run: dict) -> None:
    log.info("%s seed %d: accuracy %.4f, macro-F1 %.4f", which, run["seed"], run["accuracy"], run["f1_macro"])


# Per-process state of a --jobs worker, set once by _init_worker so the tokenizer and the encoded splits
# are built once per worker, not sent with every run.
_WORKER: dict = {}


def _init_worker(threads: int, job: tuple) -> None:
    import torch

    from pretrain.runtime.distributed import LAUNCHER_VARIABLES

    # A worker is one whole run on its own: launcher variables inherited from the parent (or a test
    # process) would make accelerate, inside the Trainer, wait for peers that never come.
    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=TOOL_LOG_FORMAT)
    model_dir, data, settings = job
    tokenizer = load_tokenizer(model_dir, model_dir)
    encoded = _encode_splits(tokenizer, data, settings.max_seq_len)
    # One bar per run from several processes would interleave; the parent shows one bar over the runs.
    quiet = replace(settings, progress=False)
    _WORKER.update(job=(model_dir, tokenizer, data, encoded, quiet))


def _worker_run(run: tuple[str, int, bool]) -> tuple[str, int, dict]:
    which, seed, announce = run
    model_dir, tokenizer, data, encoded, settings = _WORKER["job"]
    return which, seed, finetune_once(model_dir, tokenizer, data, encoded, settings, which, seed, announce)


def _run_in_workers(
    runs: list[tuple[str, int]], workers: int, job: tuple, progress: bool
) -> dict[tuple[str, int], dict]:
    import torch
    from tqdm import tqdm

    from data_pipeline.parallel import run_units

    units = [(which, seed, i == 0) for i, (which, seed) in enumerate(runs)]
    print(f"[mlm-finetune] {len(runs)} runs, {workers} at a time", file=sys.stderr, flush=True)
    results = {}
    with tqdm(total=len(runs), unit="run", disable=not progress, file=sys.stderr) as bar:
        init_args = (torch.get_num_threads(), job)
        # Spawned, not forked: the caller may be a process with torch, gloo or tokenizer threads running,
        # whose locks a forked worker would inherit.
        for which, seed, run in run_units(
            _worker_run, units, workers=workers, init=_init_worker, init_args=init_args, start_method="spawn"
        ):
            results[which, seed] = run
            _log_run(which, run)
            bar.update(1)
    return results
