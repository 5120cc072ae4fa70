"""`mlm-train export RUN_DIR|CHECKPOINT_DIR OUT_DIR [--tag TAG]`: a checkpoint -> a Hugging Face model dir.

Consolidates the DeepSpeed checkpoint (ZeRO stage 0-3, fp32 or bf16) to fp32 weights, loads them into
BertForMaskedLM (or BertForPreTraining when an NSP/SOP head was trained), and writes OUT_DIR with
`save_pretrained` (safetensors), the shards' tokenizer and a model card (README.md). OUT_DIR loads with
`AutoModelForMaskedLM.from_pretrained` and `pipeline("fill-mask")`.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import sys
import tempfile

import torch

from pretrain.checkpoint import CheckpointError, find_newest_valid
from pretrain.checkpoint_record import TRAINER_STATE_JSON, load_state, validate_checkpoint
from pretrain.config import ConfigError, load_config

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str, tag: str | None) -> tuple[str, str]:
    """(tag dir, run dir) for a run dir (newest valid checkpoint, or `tag`) or a checkpoint tag dir.

    Raises CheckpointError when nothing valid is there (naming the file at fault).
    """
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "config.yaml")):  # a run dir
        ckpt_dir = os.path.join(path, "checkpoints")
        if tag is not None:
            tag_dir = os.path.join(ckpt_dir, tag)
            validate_checkpoint(tag_dir)
            return tag_dir, path
        found = find_newest_valid(ckpt_dir)
        if found is None:
            raise CheckpointError(f"{ckpt_dir}: no complete, valid checkpoint to export")
        return found[0], path
    if tag is not None:
        raise CheckpointError(f"--tag is for a run dir; {path} has no config.yaml")
    validate_checkpoint(path)
    return path, os.path.dirname(os.path.dirname(path))


def consolidated_fp32_state_dict(tag_dir: str) -> dict[str, torch.Tensor]:
    """The full model's fp32 weights from a DeepSpeed checkpoint dir of any ZeRO stage.

    ZeRO 1-3 (and bf16) partitions are merged by DeepSpeed's zero_to_fp32 helpers (which unpickle:
    trusted checkpoints only); without partitioned optimizer files the weights are read from the
    model-states file with torch.load(weights_only=True).
    """
    if glob.glob(os.path.join(tag_dir, "*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        load_dir, tag = os.path.split(tag_dir)
        state = get_fp32_state_dict_from_zero_checkpoint(load_dir, tag=tag)
    else:
        model_file = os.path.join(tag_dir, "mp_rank_00_model_states.pt")
        if not os.path.isfile(model_file):
            raise CheckpointError(f"{model_file} missing: not a DeepSpeed checkpoint")
        state = torch.load(model_file, map_location="cpu", weights_only=True)["module"]
    return {k: v.float().contiguous() for k, v in state.items()}


def _last_eval(run_dir: str, step: int) -> dict | None:
    """The last evaluation record of metrics.jsonl at or before `step` (None when there is none)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    found = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "eval_loss" in record and record.get("step", 0) <= step:
                found = record
    return found


def _model_card(cfg, class_name: str, state: dict, eval_record: dict | None, tag_dir: str) -> str:
    metrics = "\n".join(f"- {k}: {v}" for k, v in (eval_record or {}).items()) or "- (no evaluation recorded)"
    m = cfg.model
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

    Raises CheckpointError (invalid checkpoint), ConfigError (unreadable run config) or
    FileExistsError (out_dir exists and is not empty). Writes into a temp dir renamed into place, so a
    failed export leaves no half-written out_dir.
    """
    import transformers
    from transformers import AutoTokenizer

    from pretrain.model import build_model

    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new output dir")
    tag_dir, run_dir = resolve_checkpoint(path, tag)
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{config_path} missing: export needs the run's resolved config")
    cfg = load_config(config_path)
    weights = consolidated_fp32_state_dict(tag_dir)
    tokenizer_dir = os.path.join(cfg.data.path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab_size = weights["bert.embeddings.word_embeddings.weight"].shape[0]
    model = build_model(
        cfg.model,
        vocab_size=vocab_size,
        pad_id=tokenizer.pad_token_id,
        pair_head="cls.seq_relationship.weight" in weights,
    )
    model.load_state_dict(weights, strict=True)
    class_name = model.export_class_name
    hf_model = getattr(transformers, class_name)(model.hf_config)
    hf_model.load_state_dict(model.state_dict(), strict=True)

    state = load_state(tag_dir, TRAINER_STATE_JSON.removesuffix(".json"))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = _model_card(cfg, class_name, state, _last_eval(run_dir, int(state.get("step", 0))), tag_dir)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(tmp, out_dir)
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    try:
        class_name = export_checkpoint(args.source, args.out_dir, args.tag)
    except (CheckpointError, ConfigError, FileExistsError, OSError, ValueError) as e:
        print(f"mlm-train export: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {class_name} to {args.out_dir}")
    return 0
