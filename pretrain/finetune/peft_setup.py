"""Parameter-efficient fine-tuning for `mlm-finetune` (`--peft lora`) with the `peft` library.

LoRA goes on the encoder's linear layers, chosen per architecture (`LORA_TARGETS`, by the HF
`model_type`): BERT-style encoders (bert, roberta, xlm-roberta) in attention (`query`, `key`, `value`,
`attention.output.dense`) and the MLP (`intermediate.dense`, `output.dense`); ModernBERT in attention
(`Wqkv`, `Wo`) and the MLP (`Wi`, `Wo`). Everything else of the encoder is frozen. Trained in full: the
task head (every module of the model outside the encoder: `classifier`, ModernBERT's `head`) and any
encoder module the checkpoint had no weights for (the pooler of an MLM-only export), which would
otherwise stay frozen at random weights.

A fine-tuned model is saved either as the adapter alone (`adapter_config.json` +
`adapter_model.safetensors`, with the trained head; loads with `peft.PeftModel.from_pretrained` onto the
base model) or in full (`save_pretrained`; LoRA merged into the weights first), which `Auto*` classes
load without `peft`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from data_pipeline.integrity import commit_temp_dir, temp_path
from pretrain.finetune.data import FinetuneInputError

PEFT_METHODS = ("none", "lora")
SAVE_MODES = ("adapter", "full")
# The default peak learning rate under LoRA: adapters start at zero and need larger steps than full
# fine-tuning (the LoRA paper used 4e-4 to 5e-4 for RoBERTa-base on GLUE).
LORA_LR = 5e-4

_BERT_STYLE = ("query", "key", "value", "intermediate.dense", "output.dense")
# peft matches a name when a module's name is it or ends with "." + it: "output.dense" is both the
# attention output (attention.output.dense) and the MLP's output, never the pooler or a classifier.
LORA_TARGETS = {
    "bert": _BERT_STYLE,
    "roberta": _BERT_STYLE,
    "xlm-roberta": _BERT_STYLE,
    "modernbert": ("Wqkv", "Wo", "Wi"),  # Wo: the attention output and the MLP output
}


@dataclass
class PeftSettings:
    """How the encoder is fine-tuned: all weights (`none`) or LoRA adapters (`lora`)."""

    method: str = "none"
    rank: int = 8
    alpha: float = 16.0
    """LoRA scaling: the update is (alpha / rank) * B A."""
    dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None
    """Module names LoRA goes on; None: the architecture's default (LORA_TARGETS)."""


def add_peft_arguments(parser) -> None:
    """Add the PEFT flags (--peft, --lora-*, --save-model) to an argparse parser."""
    parser.add_argument(
        "--peft", choices=PEFT_METHODS, default="none", help="lora: train LoRA adapters and the head only"
    )
    parser.add_argument("--lora-rank", type=int, default=PeftSettings.rank)
    parser.add_argument("--lora-alpha", type=float, default=PeftSettings.alpha)
    parser.add_argument("--lora-dropout", type=float, default=PeftSettings.dropout)
    parser.add_argument(
        "--lora-target-modules",
        help="comma-separated module names LoRA goes on (default: the architecture's attention and MLP)",
    )
    parser.add_argument(
        "--save-model",
        choices=SAVE_MODES,
        help="save each run's fine-tuned model under OUT/models/: the LoRA adapter and head alone, or the "
        "full model (LoRA merged in) that Auto* classes load without peft",
    )


def peft_settings(args) -> PeftSettings:
    """The PeftSettings of parsed PEFT flags (add_peft_arguments)."""
    targets = args.lora_target_modules
    return PeftSettings(
        method=args.peft,
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=tuple(m.strip() for m in targets.split(",")) if targets else None,
    )


def check_peft_settings(settings: PeftSettings) -> None:
    """Raise FinetuneInputError naming the flag when a PEFT setting is out of range."""
    if settings.method not in PEFT_METHODS:
        raise FinetuneInputError(f"--peft {settings.method!r}: use one of {', '.join(PEFT_METHODS)}")
    if settings.rank < 1:
        raise FinetuneInputError(f"--lora-rank must be >= 1, got {settings.rank}")
    if settings.alpha <= 0:
        raise FinetuneInputError(f"--lora-alpha must be > 0, got {settings.alpha}")
    if not 0 <= settings.dropout < 1:
        raise FinetuneInputError(f"--lora-dropout must be in [0, 1), got {settings.dropout}")
    if settings.target_modules is not None and not all(settings.target_modules):
        raise FinetuneInputError("--lora-target-modules: an empty module name; give names like query,value")


def lora_targets(model_type: str, settings: PeftSettings) -> list[str]:
    """The module names LoRA goes on for an HF `model_type`. Raises FinetuneInputError when the
    architecture has no default and none was named."""
    if settings.target_modules:
        return list(settings.target_modules)
    if model_type not in LORA_TARGETS:
        raise FinetuneInputError(
            f"--peft lora: no default target modules for model_type {model_type!r} (known: "
            f"{', '.join(sorted(LORA_TARGETS))}); name its linear layers with --lora-target-modules"
        )
    return list(LORA_TARGETS[model_type])


def trained_in_full(model, fresh_keys: set[str]) -> list[str]:
    """Modules trained in full under LoRA: the task head (the model's children outside its encoder) and
    every encoder module holding a parameter in `fresh_keys` (weights the checkpoint lacked)."""
    encoder = model.base_model_prefix
    head = [
        name
        for name, child in model.named_children()
        if name != encoder and next(child.parameters(), None) is not None
    ]
    fresh = sorted({key.rpartition(".")[0] for key in fresh_keys if key.startswith(encoder + ".")})
    return head + [name for name in fresh if name]


def apply_peft(model, settings: PeftSettings, fresh_keys: set[str]):
    """`model` ready to train as `settings` say: unchanged for `none`, else a peft LoRA model (encoder
    frozen, adapters on the architecture's target modules, head and `fresh_keys` modules trained in full).
    Raises FinetuneInputError when a target module is not in the model."""
    if settings.method == "none":
        return model
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model.config.model_type, settings)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        modules_to_save=trained_in_full(model, fresh_keys),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        first = str(exc).strip().splitlines()[0]
        raise FinetuneInputError(f"--lora-target-modules {','.join(targets)}: {first}") from None


def parameter_counts(model) -> dict:
    """{trainable, total} parameter counts of `model`. A peft model counts its adapters in both, and each
    module trained in full once: peft keeps the loaded original beside the trained copy, unused."""
    used = [(name, p) for name, p in model.named_parameters() if ".original_module." not in name]
    trainable = sum(p.numel() for _, p in used if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for _, p in used)}


def save_finetuned(model, tokenizer, mode: str, dest: str) -> None:
    """Write the fine-tuned `model` with its tokenizer to `dest`: `adapter` (a peft model's adapter and
    head) or `full` (a model dir `Auto*` loads without peft; LoRA merged in). Written to a temporary
    sibling and renamed into place, so a dir at `dest` is always whole; an older one is replaced."""
    from peft import PeftModel

    partial = temp_path(dest)
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that died while saving
    if mode == "adapter":
        model.save_pretrained(partial)
    else:
        # merge_and_unload changes the model in place; it is saved and dropped after this.
        full = model.merge_and_unload() if isinstance(model, PeftModel) else model
        full.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(dest, ignore_errors=True)
    commit_temp_dir(partial, dest)
