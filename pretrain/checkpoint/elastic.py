"""Elastic resume: a ZeRO checkpoint of one world size re-cut for another via DeepSpeed's universal format.

Rank 0 converts the (validated) checkpoint into RUN_DIR/checkpoints/.universal/TAG with DeepSpeed's
ds_to_universal, every input read weights-only, and lists what it wrote (size and sha256 of each file)
in .universal/TAG.json; every rank then checks that .universal/TAG holds exactly those files before
DeepSpeed loads them (weights-only too). The directory is deleted after loading (CheckpointManager).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable

from data_pipeline.integrity import write_atomic
from pretrain.checkpoint.record import CheckpointError, check_listed_files, file_entries
from pretrain.checkpoint.safe_load import deepspeed_loads_weights_only


def convert_to_universal(tag_dir: str, out_dir: str) -> None:
    """Write DeepSpeed's universal (world-size independent) form of ZeRO checkpoint `tag_dir` to `out_dir`.

    Every file of `tag_dir` is read weights-only (`deepspeed_loads_weights_only`); `tag_dir` must have
    been validated (ds_to_universal globs it, so it must hold exactly its listed files).
    """
    from deepspeed.checkpoint import ds_to_universal

    shutil.rmtree(out_dir, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=tag_dir,
        output_folder=out_dir,
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our engines carry no Megatron-style universal info; defaults suffice
    )
    with deepspeed_loads_weights_only():
        ds_to_universal.main(args)


def prepare_universal(tag_dir: str, load_dir: str, *, rank: int, agree: Callable[[bool], bool]) -> None:
    """Rank 0 converts `tag_dir` into load_dir/TAG and lists its files in load_dir/TAG.json; every rank
    then checks that load_dir/TAG holds exactly those files. `agree` is the any-rank OR collective.
    Every rank calls this. Raises CheckpointError on every rank when the conversion or a check fails.
    """
    universal_tag_dir = os.path.join(load_dir, os.path.basename(tag_dir))
    listing = f"{universal_tag_dir}.json"
    error = None
    if rank == 0:
        try:
            shutil.rmtree(load_dir, ignore_errors=True)  # a leftover of an interrupted resume
            convert_to_universal(tag_dir, universal_tag_dir)
            write_atomic(listing, json.dumps(file_entries(universal_tag_dir), indent=1))
        except (RuntimeError, OSError, ValueError, KeyError, AssertionError) as e:  # CheckpointError too
            error = e
    if agree(error is not None):
        detail = error if error is not None else "it failed on rank 0 (see its log)"
        raise CheckpointError(f"could not convert {tag_dir} for an elastic resume: {detail}") from error
    try:
        with open(listing, encoding="utf-8") as f:
            check_listed_files(universal_tag_dir, json.load(f), listing)
    except (CheckpointError, OSError, ValueError) as e:
        error = e
    if agree(error is not None):
        detail = error if error is not None else "on another rank (see its log)"
        raise CheckpointError(f"{universal_tag_dir} failed its check: {detail}") from error
