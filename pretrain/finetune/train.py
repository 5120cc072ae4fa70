"""Fine-tuning runs for `mlm-finetune` (cli.py is the command line): one run is the HF `Trainer`
with `AutoModelForSequenceClassification` on one seed; `run_finetuning` runs every model x seed, one at a
time or in CPU worker processes (`jobs`), and summarises them.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np

from pretrain import TOOL_LOG_FORMAT
from pretrain.checkpoint.input_length import longest_input
from pretrain.finetune.data import FinetuneInputError, TaskData
from pretrain.finetune.metrics import classification_metrics, summarise
from pretrain.finetune.peft_setup import PeftSettings, apply_peft, parameter_counts, save_finetuned

log = logging.getLogger("mlm-finetune")


@dataclass
class FinetuneSettings:
    """The fine-tuning budget and optimiser, the same for every seed and for the random-init baseline."""

    # The defaults are a plain Hugging Face Trainer fine-tune's, TrainingArguments' own (docs/finetuning.md,
    # "The defaults"): the BERT paper's GLUE batch of 32 left a 300-example task 30 updates, where the
    # Trainer's 8 gives 114.
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 8
    max_seq_len: int | None = None
    """Longer texts are truncated; None: the model's maximum (`model_max_length`)."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    group_by_length: bool = False
    """Batches of similar lengths (less padding, faster) rather than uniformly random batches."""
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    bf16: bool = False
    progress: bool = True
    peft: PeftSettings = field(default_factory=PeftSettings)
    save_model: str | None = None
    """Save each run's fine-tuned model: `adapter` (LoRA only) or `full`; None: save nothing."""
    save_dir: str | None = None
    """Where the saved models go, one dir per run: `<model>-seed-<seed>`."""


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


def training_arguments(settings: FinetuneSettings, seed: int, out_dir: str):
    """The Trainer's arguments of one run (`settings`, `seed`, scratch `out_dir`): the same for every task."""
    import torch
    from transformers import TrainingArguments

    use_cpu = settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available())
    # With --group-by-length, batches of similar lengths (HF's LengthGroupedSampler, seeded): with dynamic
    # padding a batch then costs its own length, not that of the longest text drawn into it.
    return TrainingArguments(
        output_dir=out_dir,
        num_train_epochs=settings.epochs,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=2 * settings.batch_size,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=settings.bf16,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=not settings.progress,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
    )


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
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer

    model, parameters = prepared_model(model_dir, data, which, seed, announce, settings)
    if title:
        print(f"[mlm-finetune] {title}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="mlm-finetune-") as out:
        args = training_arguments(settings, seed, out)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=encoded["train"],
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.remove_callback(PrinterCallback)  # without bars it prints a dict per run; we log one line
        started = time.monotonic()
        result = trainer.train()
        seconds = time.monotonic() - started
        output = trainer.predict(encoded["validation"])
    if settings.save_model:
        save_finetuned(
            model, tokenizer, settings.save_model, os.path.join(settings.save_dir, f"{which}-seed-{seed}")
        )
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    # label_ids, not data.validation.labels: the length-grouped sampler also reorders the evaluation set.
    metrics = classification_metrics(output.label_ids, np.asarray(logits).argmax(-1), len(data.label_names))
    return {
        "seed": seed,
        **metrics,
        "train_loss": float(result.training_loss),
        "train_seconds": round(seconds, 2),
        "trainable_parameters": parameters["trainable"],
        "total_parameters": parameters["total"],
    }


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
    if settings.max_seq_len is None:
        settings = replace(settings, max_seq_len=model_max_length(model_dir, tokenizer))
    runs = [(which, seed) for which in models for seed in seeds]
    results: dict[tuple[str, int], dict] = {}
    if jobs <= 1:
        encoded = _encode_splits(tokenizer, data, settings.max_seq_len)
        for done, (which, seed) in enumerate(runs, 1):
            results[which, seed] = finetune_once(
                model_dir,
                tokenizer,
                data,
                encoded,
                settings,
                which,
                seed,
                announce=done == 1,
                title=f"{which}, seed {seed} ({done}/{len(runs)})",
            )
            _log_run(which, results[which, seed])
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
