"""`mlm-train export RUN_DIR|CHECKPOINT_DIR OUT_DIR [--tag TAG]`: a checkpoint -> a Hugging Face model dir.

Everything comes from the validated checkpoint itself: the fp32 master weights (ZeRO stage 0-3, fp32,
bf16 or fp16; pretrain/checkpoint/consolidate.py, every file read weights-only), the model shape from its
record, the resolved config and the tokenizer the weights were trained with (both copied into the
checkpoint by the save). The weights are loaded into BertForMaskedLM (or BertForPreTraining when an
NSP/SOP head was trained) and OUT_DIR is written with `save_pretrained` (safetensors), the tokenizer and
a model card (README.md). OUT_DIR loads with `AutoModelForMaskedLM.from_pretrained` and
`pipeline("fill-mask")`. Every failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import shutil
import sys

import torch

from data_pipeline.integrity import commit_temp_dir
from pretrain import TOOL_LOG_FORMAT
from pretrain.checkpoint.consolidate import fp32_weights
from pretrain.checkpoint.manager import CheckpointError, resolve_checkpoint
from pretrain.checkpoint.record import CONFIG_FILE, TOKENIZER_DIR, TRAINER_STATE_JSON, load_state
from pretrain.config import ConfigError, load_config
from pretrain.metrics import read_records

log = logging.getLogger(__name__)


def _last_eval(run_dir: str, step: int) -> dict | None:
    """The last evaluation record of metrics.jsonl at or before `step` (None when there is none); a torn
    last line (a killed run) is skipped."""
    evals = [r for r in read_records(os.path.join(run_dir, "metrics.jsonl")) if "eval_loss" in r]
    evals = [r for r in evals if r["step"] <= step]
    return evals[-1] if evals else None


def _model_config(cfg_model, identity: dict):
    """The run's model section with the shape the checkpoint records (init_from is not needed again)."""
    try:
        return dataclasses.replace(
            cfg_model, preset=None, init_from=None, hidden_size=identity["model.hidden_size"],
            num_layers=identity["model.num_layers"], num_heads=identity["model.num_heads"],
            intermediate_size=identity["model.intermediate_size"],
            max_position_embeddings=identity["model.max_position_embeddings"],
        )  # fmt: skip
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"the checkpoint record's model shape is incomplete or invalid ({e})") from e


def _model_card(cfg, m, class_name: str, state: dict, eval_record: dict | None, tag_dir: str) -> str:
    metrics = "\n".join(f"- {k}: {v}" for k, v in (eval_record or {}).items()) or "- (no evaluation recorded)"
    return f"""---
library_name: transformers
tags: [bert, fill-mask, mlm-pretrain]
---
# {class_name} pretrained with mlm-pretrain

- Data: shards at `{cfg.data.path}`
- Checkpoint: `{tag_dir}`
- Optimizer steps: {state.get("step")}; training tokens: {state.get("tokens")}; samples: \
{state.get("consumed_samples")}
- Shape: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads, intermediate \
{m.intermediate_size}; precision {cfg.precision}; ZeRO stage {cfg.zero.stage}
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
    half-written out_dir; out_dir gets the permissions of a plain mkdir (the umask's).
    """
    import transformers
    from transformers import AutoTokenizer

    from pretrain.models.bert.model import build_model

    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output dir")
    tag_dir, record = resolve_checkpoint(path, tag=tag)
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
    model_cfg = _model_config(cfg.model, identity)
    model = build_model(
        model_cfg, vocab_size=identity.get("model.vocab_size", len(tokenizer)),
        pad_id=tokenizer.pad_token_id, pair_head=bool(identity.get("model.pair_head")),
    )  # fmt: skip
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{tag_dir}: the weights do not fit the recorded model shape ({e})") from e
    class_name = model.export_class_name
    hf_model = getattr(transformers, class_name)(model.hf_config)
    hf_model.load_state_dict(model.state_dict(), strict=True)

    state = load_state(tag_dir, TRAINER_STATE_JSON.removesuffix(".json"))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".export-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp)  # not mkdtemp: that is 0700, an export is for others to read (the umask decides)
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = _model_card(
            cfg, model_cfg, class_name, state, _last_eval(run_dir, int(state.get("step", 0))), tag_dir
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
