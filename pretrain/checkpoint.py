"""CheckpointManager: atomic, validated DeepSpeed checkpoints with exact-resume trainer state.

Layout (docs/checkpoints.md): RUN_DIR/checkpoints/step-XXXXXXXX/ holds DeepSpeed's files, our
trainer_state.json/.safetensors (rank 0), rng/rank-XXXXX.json/.safetensors (every rank) and, written
last by rank 0 after a barrier, COMPLETE.json (every file with size and sha256). Only then is
RUN_DIR/checkpoints/latest replaced (temp + rename + fsync). A directory without a valid COMPLETE.json
is never loaded. DeepSpeed's own `latest` file is never written.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import shutil
import time

from pretrain.checkpoint_record import (
    COMPLETE_FILE,
    TRAINER_STATE_JSON,
    CheckpointError,
    capture_rng_state,
    fsync_dir,
    load_state,
    restore_rng_state,
    save_state,
    validate_checkpoint,
    write_complete_record,
    write_file_atomic,
)
from pretrain.collectives import Collectives

__all__ = ["CheckpointError", "CheckpointManager", "find_newest_valid", "tag_for_step"]

log = logging.getLogger(__name__)
TAG_RE = re.compile(r"^step-(\d{8,})$")
LATEST_FILE = "latest"


def tag_for_step(step: int) -> str:
    """The checkpoint tag of `step`: 'step-%08d' (sorts by step)."""
    return f"step-{step:08d}"


def _tags_newest_first(ckpt_dir: str) -> list[str]:
    """Tag directory names under `ckpt_dir`, highest step first."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [n for n in os.listdir(ckpt_dir) if TAG_RE.match(n) and os.path.isdir(os.path.join(ckpt_dir, n))]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)), reverse=True)


def convert_to_universal(tag_dir: str, out_dir: str) -> None:
    """Write DeepSpeed's universal (world-size independent) form of ZeRO checkpoint `tag_dir` to `out_dir`."""
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
    ds_to_universal.main(args)


def find_newest_valid(ckpt_dir: str) -> tuple[str, dict] | None:
    """(tag dir, completion record) of the newest checkpoint under `ckpt_dir` that validates, or None.

    Each refused checkpoint is logged with the reason (the file at fault); a missing or dangling
    `latest` is logged too: `latest` is a hint for humans and tools, the scan is the truth.
    """
    latest_path = os.path.join(ckpt_dir, LATEST_FILE)
    hinted = None
    if os.path.isfile(latest_path):
        with open(latest_path, encoding="utf-8") as f:
            hinted = f.read().strip()
    for tag in _tags_newest_first(ckpt_dir):
        tag_dir = os.path.join(ckpt_dir, tag)
        try:
            record = validate_checkpoint(tag_dir)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", tag, e)
            continue
        if hinted != tag:
            log.warning(
                "%s names %r, but the newest valid checkpoint is %s; using it", latest_path, hinted, tag
            )
        return tag_dir, record
    return None


class CheckpointManager:
    """Saves and resumes checkpoints under `run_dir/checkpoints` (see the module docstring).

    Takes the run dir, the `checkpoint` config section (every_steps, every_minutes, keep_last,
    keep_every), this process's rank and world size, the config hash recorded with each checkpoint and
    the run's `Collectives` (None: CPU tensors, which gloo groups and the GPU group's cpu:gloo backend
    carry). All ranks construct one and call `save`/`resume` together.
    """

    def __init__(
        self,
        run_dir: str,
        ckpt_cfg,
        *,
        rank: int,
        world_size: int,
        config_hash: str,
        collectives: Collectives | None = None,
    ) -> None:
        """Remember the settings; nothing is written until the first save."""
        self.collectives = collectives or Collectives("cpu")
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.cfg = ckpt_cfg
        self.rank = rank
        self.world_size = world_size
        self.config_hash = config_hash
        self._last_save_time = time.monotonic()
        self.last_saved_step: int | None = None

    def should_save(self, step: int, now: float | None = None) -> bool:
        """True when `step` is a multiple of every_steps or every_minutes passed since the last save.

        `now` is a time.monotonic() value (default: the current one). With every_minutes the ranks'
        clocks may disagree, so the trainer must agree on the answer across ranks (rank 0's decision, or
        an all-reduce); `agree` does that.
        """
        if self.cfg.every_steps and step % self.cfg.every_steps == 0:
            return True
        if self.cfg.every_minutes:
            now = time.monotonic() if now is None else now
            return now - self._last_save_time >= self.cfg.every_minutes * 60
        return False

    def agree(self, decision: bool) -> bool:
        """The OR of `decision` over all ranks (a collective: every rank must call it)."""
        return decision if self.world_size == 1 else self.collectives.any(decision)

    def save(self, engine, trainer_state: dict, step: int) -> str:
        """Write the checkpoint of `step` from every rank and commit it; returns the tag directory.

        Every rank calls this. `trainer_state` is a dict of JSON values and tensors/arrays (step,
        consumed samples, sampler state, metrics, counters); this rank's RNG states are added here.
        Raises CheckpointError (on every rank) when any rank fails to write (disk full, no permission):
        the partial directory is removed, earlier checkpoints and `latest` stay as they were.
        """
        tag = tag_for_step(step)
        tag_dir = os.path.join(self.ckpt_dir, tag)
        if self.rank == 0:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        existing_complete = self._barrier_bool(self.rank == 0 and self._is_complete(tag_dir))
        if existing_complete:
            log.info("checkpoint %s already complete; not rewritten", tag_dir)
            self.last_saved_step = step
            return tag_dir
        if self.rank == 0 and os.path.exists(tag_dir):
            log.warning("removing the incomplete checkpoint %s left by an interrupted save", tag_dir)
            shutil.rmtree(tag_dir)
        self._barrier()
        error = None
        try:
            engine.save_checkpoint(self.ckpt_dir, tag, client_state={}, save_latest=False)
            rng_dir = os.path.join(tag_dir, "rng")
            os.makedirs(rng_dir, exist_ok=True)
            save_state(capture_rng_state(), rng_dir, f"rank-{self.rank:05d}")
            if self.rank == 0:
                save_state(trainer_state, tag_dir, TRAINER_STATE_JSON.removesuffix(".json"))
        except (OSError, RuntimeError) as e:
            error = e
        if self._barrier_bool(error is not None):
            if self.rank == 0:
                shutil.rmtree(tag_dir, ignore_errors=True)
            detail = f": {error}" if error is not None else " (another rank failed; see its log)"
            raise CheckpointError(
                f"could not write checkpoint {tag_dir}{detail}; the previous checkpoint and "
                f"{os.path.join(self.ckpt_dir, LATEST_FILE)} are unchanged. Free disk space or fix "
                "permissions."
            ) from error
        if self.rank == 0:
            try:
                write_complete_record(
                    tag_dir, step=step, world_size=self.world_size, config_hash=self.config_hash
                )
                fsync_dir(tag_dir)
                write_file_atomic(os.path.join(self.ckpt_dir, LATEST_FILE), tag + "\n")
            except OSError as e:
                error = e
        if self._barrier_bool(error is not None):
            if self.rank == 0:
                shutil.rmtree(tag_dir, ignore_errors=True)
            raise CheckpointError(f"could not commit checkpoint {tag_dir}: {error}; `latest` unchanged")
        self._last_save_time = time.monotonic()
        self.last_saved_step = step
        if self.rank == 0:
            self.prune()
        self._barrier()
        log.info("saved checkpoint %s", tag_dir)
        return tag_dir

    def prune(self) -> list[str]:
        """Delete complete checkpoints beyond keep_last unless their step is a multiple of keep_every.

        Incomplete directories older than the newest complete one are deleted too. Returns the deleted
        tag directories. Rank 0 only.
        """
        deleted, kept = [], 0
        for tag in _tags_newest_first(self.ckpt_dir):
            tag_dir = os.path.join(self.ckpt_dir, tag)
            step = int(TAG_RE.match(tag).group(1))
            if os.path.isfile(os.path.join(tag_dir, COMPLETE_FILE)):  # no re-hash: pruning must be cheap
                kept += 1
                if kept <= self.cfg.keep_last or (self.cfg.keep_every and step % self.cfg.keep_every == 0):
                    continue
            elif kept == 0:
                continue  # newer than every complete one: may be a save in progress
            shutil.rmtree(tag_dir, ignore_errors=True)
            deleted.append(tag_dir)
        return deleted

    def resolve(self, spec: str) -> tuple[str, dict] | None:
        """The checkpoint `spec` names: (tag dir, completion record), or None for a fresh start.

        'none' -> None; 'auto' -> the newest valid checkpoint of this run (None when there is none);
        a PATH -> that tag directory, or the newest valid one under a checkpoints/ or run directory.
        Raises CheckpointError when an explicit PATH is missing or invalid (never a silent fresh start).
        """
        if spec == "none":
            return None
        if spec == "auto":
            found = find_newest_valid(self.ckpt_dir)
            if found is None:
                log.info("no complete checkpoint in %s; starting fresh", self.ckpt_dir)
            return found
        path = os.path.abspath(spec)
        if not os.path.isdir(path):
            raise CheckpointError(f"train.resume={spec}: no such checkpoint directory")
        if TAG_RE.match(os.path.basename(path)) or os.path.isfile(os.path.join(path, COMPLETE_FILE)):
            return path, validate_checkpoint(path)
        for candidate in (path, os.path.join(path, "checkpoints")):
            found = find_newest_valid(candidate)
            if found is not None:
                return found
        raise CheckpointError(f"train.resume={spec}: no complete, valid checkpoint found there")

    def resume(self, engine, spec: str) -> dict | None:
        """Load the checkpoint `spec` names into `engine` and return our trainer_state (None: fresh).

        Every rank calls this. Loads DeepSpeed's module, optimizer and LR scheduler states and this
        rank's RNG states. The trainer state gains 'checkpoint' (the tag dir) and 'saved_world_size'.
        A checkpoint from another world size is loaded through DeepSpeed's universal checkpoint format
        (ZeRO partitions re-cut; not bitwise, dropout RNG not restored). Raises CheckpointError for an
        invalid explicit path or a failing DeepSpeed load.
        """
        found = self.resolve(spec)
        if found is None:
            return None
        tag_dir, record = found
        saved_world = int(record["world_size"])
        if record.get("config_hash") != self.config_hash:
            log.warning(
                "resuming %s written under another config (hash %s, now %s)",
                tag_dir,
                record.get("config_hash"),
                self.config_hash,
            )
        log.info("resuming from %s (step %s, saved by %d ranks)", tag_dir, record["step"], saved_world)
        self._load_engine(engine, tag_dir, saved_world)
        state = load_state(tag_dir, TRAINER_STATE_JSON.removesuffix(".json"))
        rng_dir = os.path.join(tag_dir, "rng")
        if saved_world == self.world_size:
            restore_rng_state(load_state(rng_dir, f"rank-{self.rank:05d}"))
        else:
            log.warning(
                "world size changed %d -> %d: RNG states (dropout) not restored", saved_world, self.world_size
            )
        state["checkpoint"] = tag_dir
        state["saved_world_size"] = saved_world
        self.last_saved_step = int(record["step"])
        return state

    def _load_engine(self, engine, tag_dir: str, saved_world: int) -> None:
        """engine.load_checkpoint, through a universal checkpoint when ZeRO partitions must be re-cut."""
        partitioned = bool(glob.glob(os.path.join(tag_dir, "*optim_states.pt")))
        elastic = partitioned and saved_world != self.world_size
        load_dir, tag = os.path.split(tag_dir)
        if elastic:
            # DeepSpeed refuses ZeRO optimizer partitions of another world size; its universal format
            # holds each parameter's fp32 weights and optimizer moments whole, so any world size can load
            load_dir = os.path.join(self.ckpt_dir, ".universal")
            if self.rank == 0:
                convert_to_universal(tag_dir, os.path.join(load_dir, tag))
            self._barrier()
            log.warning(
                "elastic resume: %d -> %d ranks via a universal checkpoint", saved_world, self.world_size
            )
        engine._config.load_universal_checkpoint = elastic  # DeepSpeed reads this flag only from its config
        try:
            load_path, _ = engine.load_checkpoint(
                load_dir, tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        except (RuntimeError, ValueError, AssertionError, KeyError, OSError) as e:
            raise CheckpointError(
                f"DeepSpeed could not load {tag_dir} (saved by {saved_world} ranks, now "
                f"{self.world_size}): {e}"
            ) from e
        finally:
            engine._config.load_universal_checkpoint = False
            if elastic:
                self._barrier()
                if self.rank == 0:
                    shutil.rmtree(load_dir, ignore_errors=True)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint files in {tag_dir}")

    @staticmethod
    def _is_complete(tag_dir: str) -> bool:
        try:
            validate_checkpoint(tag_dir)
            return True
        except CheckpointError:
            return False

    def _barrier(self) -> None:
        if self.world_size > 1:
            self.collectives.barrier()

    def _barrier_bool(self, flag: bool) -> bool:
        """A barrier that also returns the OR of `flag` over all ranks."""
        return self.agree(flag)
