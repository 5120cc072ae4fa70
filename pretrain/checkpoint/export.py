"""`mlm-train export RUN_DIR|CHECKPOINT_DIR OUT_DIR [--tag TAG]`: a checkpoint -> a Hugging Face model dir.

Everything comes from the validated checkpoint itself: the fp32 master weights (ZeRO stage 0-3, fp32,
bf16 or fp16; consolidate.py, every file read weights-only), the model's `transformers` config
(hf_config.json), the resolved config and the tokenizer the weights were trained with (all written into
the checkpoint by the save). The weights are loaded with `strict=True` into the `transformers` class the
HF config names, one of its architecture's export classes (BERT: BertForMaskedLM, or BertForPreTraining
when an NSP/SOP head was trained; ModernBERT: ModernBertForMaskedLM) and OUT_DIR is written with
`save_pretrained` (safetensors), the tokenizer (its `model_max_length` the longest input the model takes,
`input_length.longest_input`) and a model card (README.md). OUT_DIR loads with
`AutoModelForMaskedLM.from_pretrained` and `pipeline("fill-mask")`. Every failure is one line on stderr
and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time

import torch

from data_pipeline.integrity import commit_temp_dir
from pretrain import TOOL_LOG_FORMAT
from pretrain.checkpoint.consolidate import fp32_weights
from pretrain.checkpoint.input_length import longest_input
from pretrain.checkpoint.manager import CheckpointError, resolve_checkpoint
from pretrain.checkpoint.record import (
    CONFIG_FILE,
    HF_CONFIG_FILE,
    TOKENIZER_DIR,
    TRAINER_STATE_JSON,
    load_state,
)
from pretrain.checkpoint.run_lock import process_is_gone
from pretrain.config import ConfigError, load_config
from pretrain.metrics import read_records
from pretrain.models.registry import get_architecture

log = logging.getLogger(__name__)
# An export writes OUT_DIR's parent/.NAME.export-HOST-PID-RANDOM, then renames it to OUT_DIR. A killed
# export leaves it: the next export to NAME removes it when its PID is gone from this host, or when it
# is older than this (another host's).
LEFTOVER_SECONDS = 24 * 3600


def _temp_prefix(out_dir: str) -> str:
    return f".{os.path.basename(os.path.abspath(out_dir))}.export-"


def clear_export_leftovers(out_dir: str) -> list[str]:
    """Remove the temp dirs that exports to `out_dir` left beside it when killed (by our temp naming:
    `.NAME.export-HOST-PID-RANDOM`, PID gone from this host or older than LEFTOVER_SECONDS); returns them.
    A live export's temp dir, and anything not named so, is left alone."""
    parent, prefix = os.path.dirname(os.path.abspath(out_dir)), _temp_prefix(out_dir)
    removed = []
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            host, pid, _ = name[len(prefix) :].rsplit("-", 2)
            pid = int(pid)
            age = time.time() - os.stat(path).st_mtime
        except (ValueError, OSError):
            continue
        if process_is_gone(host, pid) or age > LEFTOVER_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            log.warning(
                "removed %s, left by an export to %s that did not finish (PID %d on %s)",
                path,
                out_dir,
                pid,
                host,
            )
            removed.append(path)
    return removed


def _refuse_target_in_checkpoints(tag_dir: str, out_dir: str) -> None:
    """Raise CheckpointError when `out_dir` lies inside the checkpoints/ dir `tag_dir` belongs to: that dir
    only holds checkpoints (resume scans it, pruning and save clean it)."""
    ckpt_dir = os.path.realpath(os.path.dirname(tag_dir))
    if os.path.basename(ckpt_dir) != "checkpoints":
        return
    target = os.path.realpath(out_dir)
    if target == ckpt_dir or target.startswith(ckpt_dir + os.sep):
        raise CheckpointError(
            f"{out_dir} is inside {ckpt_dir}, which holds only checkpoints (resume and pruning manage it); "
            f"export elsewhere, e.g. {os.path.join(os.path.dirname(ckpt_dir), 'export')}"
        )


def _last_eval(run_dir: str, step: int) -> dict | None:
    """The last evaluation record of metrics.jsonl at or before `step` (None when there is none); a torn
    last line (a killed run) is skipped."""
    evals = [r for r in read_records(os.path.join(run_dir, "metrics.jsonl")) if "eval_loss" in r]
    evals = [r for r in evals if r["step"] <= step]
    return evals[-1] if evals else None


def _hf_config(tag_dir: str, files: dict, arch, model_cfg, identity: dict, pad_id: int):
    """The `transformers` config of the checkpoint's model: its hf_config.json (JSON only: no code runs
    from it), whose model_type must be the architecture's and whose `architectures` one of its export
    classes; for checkpoints written before they held one, rebuilt by the architecture from the record.

    Raises CheckpointError naming the file when it is not such a config.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if HF_CONFIG_FILE not in files:
        rebuild = getattr(arch.implementation(), "hf_config_from_identity", None)
        if rebuild is None:
            raise CheckpointError(
                f"{tag_dir} holds no {HF_CONFIG_FILE} (not saved by the trainer); cannot export"
            )
        try:
            return rebuild(model_cfg, identity, pad_id=pad_id)
        except ConfigError as e:
            raise CheckpointError(f"{tag_dir}: {e}") from e
    path = os.path.join(tag_dir, HF_CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from e
    if not isinstance(data, dict) or data.get("model_type") != arch.hf_model_type:
        found = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: model_type {found!r} is not {arch.hf_model_type!r} (model.arch {arch.name})"
        )
    classes = data.get("architectures")
    if not (isinstance(classes, list) and len(classes) == 1 and classes[0] in arch.export_classes):
        raise CheckpointError(
            f"{path}: architectures {classes!r} is not one of {', '.join(arch.export_classes)}"
        )
    try:
        return CONFIG_MAPPING[arch.hf_model_type].from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid {arch.hf_model_type} config ({e})") from e


def _data_line(data_cfg) -> str:
    """Where the model card says the training rows came from: the shard set, or the mixture's sources."""
    if not data_cfg.sources:
        return f"shards at `{data_cfg.path}`"
    return "a mixture of " + ", ".join(
        f"{s.name} (`{s.path}`, weight {'from size' if s.weight is None else s.weight})"
        for s in data_cfg.sources
    )


def _model_card(cfg, identity: dict, hf_config, state: dict, eval_record: dict | None, tag_dir: str) -> str:
    class_name = hf_config.architectures[0]
    shape = ", ".join(
        f"{k.removeprefix('model.')} {v}" for k, v in identity.items() if k.startswith("model.")
    )
    metrics = "\n".join(f"- {k}: {v}" for k, v in (eval_record or {}).items()) or "- (no evaluation recorded)"
    return f"""---
library_name: transformers
tags: [{hf_config.model_type}, fill-mask, mlm-pretrain]
---
# {class_name} pretrained with mlm-pretrain

- Data: {_data_line(cfg.data)}
- Checkpoint: `{tag_dir}`
- Optimizer steps: {state.get("step")}; training tokens: {state.get("tokens")}; samples: \
{state.get("consumed_samples")}
- Model: {shape}; precision {cfg.precision}; ZeRO stage {cfg.zero.stage}
- Masking: {cfg.masking.probability:.0%} of tokens (whole words: {cfg.masking.whole_word})

## Final evaluation (validation split)
{metrics}

```python
from transformers import pipeline
fill = pipeline("fill-mask", model="path/to/this/dir")
```
"""


def export_checkpoint(path: str, out_dir: str, tag: str | None = None) -> str:
    """Export the checkpoint at `path` (run dir or tag dir) to `out_dir`; returns the HF class name.

    Raises CheckpointError (invalid checkpoint, a file that is not weights-only loadable, weights that
    do not fit the recorded shape), ConfigError (the checkpoint's config) or FileExistsError (out_dir
    exists and is not empty). Writes into a temp dir renamed into place, so a failed export leaves no
    half-written out_dir (and the temp dir a killed export left is removed by the next export to the same
    out_dir, `clear_export_leftovers`); out_dir gets the permissions of a plain mkdir (the umask's).
    Raises CheckpointError when out_dir lies inside the run's checkpoints/ dir.
    """
    import transformers
    from transformers import AutoTokenizer

    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output dir")
    tag_dir, record = resolve_checkpoint(path, tag=tag)
    _refuse_target_in_checkpoints(tag_dir, out_dir)
    run_dir = os.path.dirname(os.path.dirname(tag_dir))  # RUN_DIR/checkpoints/step-XXXXXXXX
    files, identity = record["files"], record["identity"]
    if CONFIG_FILE not in files or not any(rel.startswith(f"{TOKENIZER_DIR}/") for rel in files):
        raise CheckpointError(
            f"{tag_dir} holds no {CONFIG_FILE} and {TOKENIZER_DIR}/ (not saved by the trainer); cannot export"
        )
    cfg = load_config(os.path.join(tag_dir, CONFIG_FILE))
    weights = fp32_weights(tag_dir, record)
    tokenizer = AutoTokenizer.from_pretrained(
        os.path.join(tag_dir, TOKENIZER_DIR), local_files_only=True, trust_remote_code=False
    )
    arch = get_architecture(cfg.model.arch)
    hf_config = _hf_config(tag_dir, files, arch, cfg.model, identity, tokenizer.pad_token_id)
    class_name = hf_config.architectures[0]
    # Saved without a limit, a tokenizer says 1e30 (transformers' "none"): truncation=True and fill-mask
    # would then feed a long text past the model's positions. The export's tokenizer says the model's own.
    limit = longest_input(hf_config)
    if limit is not None:  # BERT, RoBERTa and ModernBERT configs all have one
        tokenizer.model_max_length = min(tokenizer.model_max_length, limit)
    hf_model = getattr(transformers, class_name)(hf_config)
    try:
        hf_model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{tag_dir}: the weights do not fit the recorded model ({e})") from e

    state = load_state(tag_dir, TRAINER_STATE_JSON.removesuffix(".json"))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    clear_export_leftovers(out_dir)
    tmp = os.path.join(
        parent, f"{_temp_prefix(out_dir)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    )
    os.mkdir(tmp)  # not mkdtemp: that is 0700, an export is for others to read (the umask decides)
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = _model_card(
            cfg, identity, hf_config, state, _last_eval(run_dir, int(state.get("step", 0))), tag_dir
        )
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        commit_temp_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s) to %s", tag_dir, class_name, out_dir)
    return class_name


def main(argv: list[str]) -> int:
    """`mlm-train export RUN_DIR|CHECKPOINT_DIR OUT_DIR [--tag TAG]`; returns the exit code (0 / 1)."""
    parser = argparse.ArgumentParser(
        prog="mlm-train export",
        description="Consolidate a checkpoint to fp32 and write a Hugging Face model dir (safetensors).",
    )
    parser.add_argument(
        "source", help="a run dir (newest valid checkpoint) or a checkpoint dir (step-XXXXXXXX)"
    )
    parser.add_argument("out_dir", help="output dir (must not exist or be empty)")
    parser.add_argument("--tag", help="with a run dir: export this checkpoint tag instead of the newest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=TOOL_LOG_FORMAT)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    try:
        class_name = export_checkpoint(args.source, args.out_dir, args.tag)
    except (CheckpointError, ConfigError, FileExistsError, OSError, ValueError, RuntimeError) as e:
        # DataError is a ValueError, CheckpointError a RuntimeError; a message is kept to one line
        print(f"mlm-train export: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"wrote {class_name} to {args.out_dir}")
    return 0
