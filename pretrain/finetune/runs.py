"""What one fine-tuning run of any task shares (sequence classification, train.py; token classification,
token_train.py): its settings, the HF Trainer's arguments, the training itself, the saved model, the run's
record in the report, and the runs of every model x seed one after the other.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

from pretrain.finetune.peft_setup import PeftSettings, save_finetuned


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
    """Longer texts are truncated; None: the model's maximum (`train.resolve_max_seq_len`)."""
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
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float in [0, 1) is a fraction of the steps
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


def train_run(
    model, settings: FinetuneSettings, seed: int, train_dataset, collator, title: str | None = None
):
    """Train `model` on `train_dataset` with the HF Trainer: one run of any task (`settings`, `seed`, the
    task's `collator`), its `title` printed (stderr) first. Returns the trainer (for predictions) and
    {train_loss, train_seconds}."""
    from transformers import PrinterCallback, Trainer

    if title:
        print(f"[mlm-finetune] {title}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mlm-finetune-") as out:
        trainer = Trainer(
            model=model,
            args=training_arguments(settings, seed, out),
            train_dataset=train_dataset,
            data_collator=collator,
        )
        trainer.remove_callback(PrinterCallback)  # without bars it prints a dict per run; we log one line
        started = time.monotonic()
        result = trainer.train()
        seconds = time.monotonic() - started
    return trainer, {"train_loss": float(result.training_loss), "train_seconds": round(seconds, 2)}


def save_run(model, tokenizer, settings: FinetuneSettings, which: str, seed: int) -> None:
    """Save a run's fine-tuned model as `settings.save_model` says (nothing when None), one dir per run."""
    if settings.save_model:
        save_finetuned(
            model, tokenizer, settings.save_model, os.path.join(settings.save_dir, f"{which}-seed-{seed}")
        )


def run_record(seed: int, scores: dict, training: dict, parameters: dict) -> dict:
    """One run's entry of the report: its seed, the task's `scores`, `train_run`'s training figures and
    the model's parameter counts."""
    return {
        "seed": seed,
        **scores,
        **training,
        "trainable_parameters": parameters["trainable"],
        "total_parameters": parameters["total"],
    }


def run_in_turn(runs: list[tuple[str, int]], run_once, log_run) -> dict[tuple[str, int], dict]:
    """Each (model, seed) of `runs` one after the other: `run_once(which, seed, announce=, title=)` (the
    first run announces what starts fresh; the title counts the runs), each result logged with
    `log_run(which, result)`. Returns {(model, seed): result}."""
    results = {}
    for done, (which, seed) in enumerate(runs, 1):
        title = f"{which}, seed {seed} ({done}/{len(runs)})"
        results[which, seed] = run_once(which, seed, announce=done == 1, title=title)
        log_run(which, results[which, seed])
    return results
