"""The full fp32 weights of a validated checkpoint, from the fp32 master copies, read weights-only.

- ZeRO 1-3: the optimizer's fp32 partitions (one file per rank) merged by DeepSpeed's zero_to_fp32
  functions, with every torch.load inside made weights-only (`deepspeed_loads_weights_only`).
- ZeRO-0, 16-bit weights (bf16/fp16): the fp32 master copies DeepSpeed's FP16 optimizers keep in the
  model-states file (`optimizer` -> `fp32_groups`), by position within each optimizer group; the names
  come from the checkpoint record (`master_param_groups`), as DeepSpeed's file does not store them.
- ZeRO-0 fp32: the module weights are the master copy.

Only files the checkpoint's record lists are opened (the checkpoint was validated to hold exactly
those); their layout is checked before use, so a mismatch is a CheckpointError naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re

import torch

from pretrain.checkpoint.record import CheckpointError
from pretrain.checkpoint.safe_load import deepspeed_loads_weights_only, load_weights_only

__all__ = ["fp32_weights"]

log = logging.getLogger(__name__)
MODEL_STATES = "mp_rank_00_model_states.pt"
_OPTIM_RE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def fp32_weights(tag_dir: str, record: dict) -> dict[str, torch.Tensor]:
    """{state-dict key: tensor} of the whole model in fp32 (integer buffers keep their dtype), tied
    weights included under each of their names. `record` is the validated COMPLETE.json of `tag_dir`.

    Raises CheckpointError naming the file when a file is not weights-only loadable or its layout is
    not one of DeepSpeed's (ZeRO 0-3, fp32/bf16/fp16) as written by this trainer.
    """
    partitions = sorted((int(m.group(1)), rel) for rel in record["files"] if (m := _OPTIM_RE.match(rel)))
    if partitions:
        ranks = [r for r, _ in partitions]
        if ranks != list(range(len(ranks))):
            raise CheckpointError(
                f"{tag_dir}: optimizer partitions of ranks {ranks}; expected 0..{len(ranks) - 1} once each"
            )
        state = _merged_zero_partitions(tag_dir)
    else:
        state = _stage0_master(tag_dir, record)
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in state.items()}


def _merged_zero_partitions(tag_dir: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    load_dir, tag = os.path.split(tag_dir)
    chatter = io.StringIO()  # zero_to_fp32 prints progress lines and bars; keep them out of the CLI
    try:
        with (
            deepspeed_loads_weights_only(),
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
        ):
            state = get_fp32_state_dict_from_zero_checkpoint(load_dir, tag=tag)
    except (ValueError, KeyError, TypeError, IndexError, FileNotFoundError) as e:
        raise CheckpointError(f"{tag_dir}: DeepSpeed's ZeRO partitions do not merge ({e})") from e
    log.debug("zero_to_fp32: %s", chatter.getvalue())
    return state


def _stage0_master(tag_dir: str, record: dict) -> dict[str, torch.Tensor]:
    path = os.path.join(tag_dir, MODEL_STATES)
    if MODEL_STATES not in record["files"]:
        raise CheckpointError(f"{tag_dir}: no {MODEL_STATES} listed; not a DeepSpeed ZeRO-0 checkpoint")
    states = load_weights_only(path)
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict) or not all(isinstance(v, torch.Tensor) for v in module.values()):
        raise CheckpointError(f"{path}: no 'module' weights in it; not a DeepSpeed model-states file")
    optimizer = states.get("optimizer")
    masters = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
    flat = optimizer.get("fp32_groups_flat") if isinstance(optimizer, dict) else None
    if masters is None and flat is None:
        return module  # fp32 training: the module weights are the master copy
    names = record.get("master_param_groups")
    if names is None:
        raise CheckpointError(
            f"{path} holds 16-bit weights, but {tag_dir}/COMPLETE.json does not name the optimizer's "
            "parameters; cannot find the fp32 master copy of each weight"
        )
    if masters is None:
        masters = [
            _unflatten(path, group, [module.get(n) for n in group_names])
            for group, group_names in zip(flat, names, strict=False)
        ]
    return _with_masters(path, module, names, masters)


def _unflatten(path: str, flat, like: list) -> list[torch.Tensor]:
    if (
        any(t is None for t in like)
        or not isinstance(flat, torch.Tensor)
        or flat.numel() < sum(t.numel() for t in like)
    ):
        raise CheckpointError(f"{path}: the flat fp32 master group does not match the named parameters")
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return out


def _with_masters(path: str, module: dict, names: list, masters: list) -> dict[str, torch.Tensor]:
    """`module` with each named parameter (and every key tied to it) replaced by its fp32 master."""
    if len(masters) != len(names) or any(len(m) != len(n) for m, n in zip(masters, names, strict=False)):
        raise CheckpointError(f"{path}: the fp32 master groups do not match the recorded parameter groups")

    def where(t: torch.Tensor) -> tuple:  # torch.save keeps tied tensors as views of one storage
        return t.data_ptr(), tuple(t.shape), t.stride()

    aliases: dict[tuple, list[str]] = {}
    for key, tensor in module.items():
        aliases.setdefault(where(tensor), []).append(key)
    out = dict(module)
    for group_names, group in zip(names, masters, strict=True):
        for name, master in zip(group_names, group, strict=True):
            if (
                name not in module
                or not isinstance(master, torch.Tensor)
                or master.shape != module[name].shape
            ):
                raise CheckpointError(f"{path}: no fp32 master of the shape of {name!r}")
            for key in aliases[where(module[name])]:
                out[key] = master
    return out
