"""CheckpointManager: atomic, validated DeepSpeed checkpoints with exact-resume trainer state.

Layout (docs/checkpoints.md): RUN_DIR/checkpoints/step-XXXXXXXX/ holds DeepSpeed's files, our
trainer_state.json/.safetensors (rank 0), rng/rank-XXXXX.json/.safetensors (every rank) and, written
last by rank 0 after a barrier, COMPLETE.json (every file with size and sha256). Only then is
RUN_DIR/checkpoints/latest replaced (temp + rename + fsync). A directory without a valid COMPLETE.json
is never loaded. DeepSpeed's own `latest` file is never written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable

import yaml

from data_pipeline.integrity import fsync_dir, fsync_file, write_atomic
from pretrain.checkpoint.elastic import prepare_universal
from pretrain.checkpoint.identity import RunDescription, check_resume_identity, config_changes
from pretrain.checkpoint.record import (
    COMPLETE_FILE,
    CONFIG_FILE,
    HF_CONFIG_FILE,
    TOKENIZER_DIR,
    TRAINER_STATE_JSON,
    CheckpointError,
    capture_rng_state,
    load_state,
    restore_rng_state,
    save_state,
    validate_checkpoint,
    write_complete_record,
)
from pretrain.checkpoint.safe_load import deepspeed_loads_weights_only
from pretrain.config.files import read_yaml_mapping
from pretrain.errors import ConfigError
from pretrain.runtime.collectives import Collectives
from pretrain.runtime.engine_state import (
    apply_lr_schedule,
    fresh_base_lrs,
    master_param_groups,
    weights_are_finite,
)

__all__ = ["CheckpointError", "CheckpointManager", "find_newest_valid", "resolve_checkpoint", "tag_for_step"]

log = logging.getLogger(__name__)
TAG_RE = re.compile(r"^step-(\d{8,})$")
LATEST_FILE = "latest"
UNIVERSAL_DIR = ".universal"  # elastic resume's temporary conversion (pretrain/checkpoint/elastic.py)
REJECTED_DIR = ".rejected"  # checkpoint dirs we will not use but did not demonstrably write: moved here
SAVING_SUFFIX = ".saving"  # CKPT_DIR/.TAG.saving: a save of TAG started and has not committed yet


def saving_marker(ckpt_dir: str, tag: str) -> str:
    """The marker a save of `tag` writes before its first file and removes once committed."""
    return os.path.join(ckpt_dir, f".{tag}{SAVING_SUFFIX}")


def clear_leftover(tag_dir: str) -> str:
    """Make room for a save of `tag_dir`'s tag, or drop an unusable checkpoint dir; returns what was done.

    Only a dir whose save marker (`saving_marker`) is still there is ours and half-written: it is
    deleted. Anything else (a user's files, a complete checkpoint that fails validation) is moved to
    CKPT_DIR/.rejected/TAG-YYYYmmddTHHMMSS, never deleted. Logged either way. Rank 0 only.
    """
    ckpt_dir, tag = os.path.split(tag_dir)
    marker = saving_marker(ckpt_dir, tag)
    if os.path.exists(marker):
        shutil.rmtree(tag_dir, ignore_errors=True)
        os.remove(marker)
        log.warning("removed %s: a save of ours started it and never committed (%s)", tag_dir, marker)
        return "removed"
    rejected = os.path.join(ckpt_dir, REJECTED_DIR)
    os.makedirs(rejected, exist_ok=True)
    dst = os.path.join(rejected, f"{tag}-{time.strftime('%Y%m%dT%H%M%S')}")
    base, n = dst, 1
    while os.path.exists(dst):
        dst, n = f"{base}~{n}", n + 1
    os.rename(tag_dir, dst)
    fsync_dir(ckpt_dir)
    log.warning(
        "moved %s aside to %s: it is not a valid checkpoint and no save of ours left it half-written; "
        "look at it and delete it yourself",
        tag_dir,
        dst,
    )
    return "moved"


def tag_for_step(step: int) -> str:
    """The checkpoint tag of `step`: 'step-%08d' (sorts by step)."""
    return f"step-{step:08d}"


def _tags_newest_first(ckpt_dir: str) -> list[str]:
    """Tag directory names under `ckpt_dir`, highest step first."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [n for n in os.listdir(ckpt_dir) if TAG_RE.match(n) and os.path.isdir(os.path.join(ckpt_dir, n))]
    return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)), reverse=True)


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


def resolve_checkpoint(path: str, *, tag: str | None = None, label: str | None = None) -> tuple[str, dict]:
    """(tag dir, completion record) of the checkpoint `path` names; the one resolver (resume and export).

    `path` is a checkpoint (tag) directory itself, or a run directory or its checkpoints/ directory:
    then its newest valid checkpoint, or the one named `tag` (step-XXXXXXXX). `label` starts the
    messages (default: the path). Raises CheckpointError naming the path, or the file at fault, when
    nothing valid is there (never a silent fresh start).
    """
    path = os.path.abspath(path)
    label = label or path
    if not os.path.isdir(path):
        raise CheckpointError(f"{label}: no such checkpoint directory (not a checkpoint or run dir)")
    if TAG_RE.match(os.path.basename(path)) or os.path.isfile(os.path.join(path, COMPLETE_FILE)):
        if tag is not None:
            raise CheckpointError(f"--tag is for a run dir; {path} is a checkpoint dir")
        return path, validate_checkpoint(path)
    if tag is not None:
        if not TAG_RE.match(tag):
            raise CheckpointError(f"--tag {tag!r} is not a checkpoint tag (step-XXXXXXXX)")
        tag_dir = os.path.join(path, "checkpoints", tag)
        return tag_dir, validate_checkpoint(tag_dir)
    for candidate in (path, os.path.join(path, "checkpoints")):
        found = find_newest_valid(candidate)
        if found is not None:
            return found
    raise CheckpointError(f"{label}: no complete, valid checkpoint found there")


def _remove_marker(marker: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(marker)
    fsync_dir(os.path.dirname(marker))


class CheckpointManager:
    """Saves and resumes checkpoints under `run_dir/checkpoints` (see the module docstring).

    Takes the run dir, the `checkpoint` config section (every_steps, every_minutes, keep_last,
    keep_every), this process's rank and world size, the config hash recorded with each checkpoint and
    the `RunDescription` (identity, resolved config, tokenizer) each checkpoint records and each resume
    checks, and the run's `Collectives` (None: CPU tensors, which gloo groups and the GPU group's
    cpu:gloo backend carry). All ranks construct one and call `save`/`resume` together.
    """

    def __init__(
        self,
        run_dir: str,
        ckpt_cfg,
        *,
        rank: int,
        world_size: int,
        config_hash: str,
        run: RunDescription | None = None,
        collectives: Collectives | None = None,
    ) -> None:
        """Remember the settings; nothing is written until the first save."""
        self.collectives = collectives or Collectives("cpu")
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.cfg = ckpt_cfg
        self.rank = rank
        self.world_size = world_size
        self.config_hash = config_hash
        self.run = run or RunDescription()
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

    def save_if_due(
        self,
        engine,
        trainer_state: Callable[[], dict],
        step: int,
        *,
        requested: bool = False,
        last: bool = False,
    ) -> str | None:
        """Save `step` when it is due; returns the tag directory, or None when no save was due.

        The one save decision of the training loop: a step saves when the ranks agreed it should
        (`requested`: any rank's `should_save`, or a preemption) or when it is the run's last step (`last`),
        and never twice (a step already saved, e.g. the one a run resumed at, is not saved again).
        `trainer_state` is called only when saving. Every rank calls this with the same arguments.
        Raises what `save` raises.
        """
        if not (requested or last) or self.last_saved_step == step:
            return None
        return self.save(engine, trainer_state(), step)

    def agree(self, decision: bool) -> bool:
        """The OR of `decision` over all ranks (a collective: every rank must call it)."""
        return decision if self.world_size == 1 else self.collectives.any(decision)

    def save(self, engine, trainer_state: dict, step: int) -> str:
        """Write the checkpoint of `step` from every rank and commit it; returns the tag directory.

        Every rank calls this. `trainer_state` is a dict of JSON values and tensors/arrays (step,
        consumed samples, sampler state, metrics, counters); this rank's RNG states are added here;
        rank 0 adds the resolved config and the tokenizer. Raises CheckpointError (on every rank) when
        any rank holds non-finite weights (nothing is written) or fails to write (disk full, no
        permission): the partial directory is removed, earlier checkpoints and `latest` stay as they were.
        """
        tag = tag_for_step(step)
        tag_dir = os.path.join(self.ckpt_dir, tag)
        # Never a checkpoint of NaN/Inf weights: each rank checks what it holds (under ZeRO-3 its
        # partition; the fp32 master copies too), and the ranks agree.
        local_bad = not weights_are_finite(engine)
        if self.agree(local_bad):
            where = "on this rank" if local_bad else "on another rank (see its log)"
            raise CheckpointError(
                f"refusing to write checkpoint {tag_dir}: the weights hold NaN or Inf {where}; the previous "
                f"checkpoint and {os.path.join(self.ckpt_dir, LATEST_FILE)} are unchanged. Lower optim.lr "
                "or look for bad data before the step where the loss went non-finite"
            )
        if self.rank == 0:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        existing_complete = self._barrier_bool(self.rank == 0 and self._is_complete(tag_dir))
        if existing_complete:
            if self.rank == 0 and os.path.exists(saving_marker(self.ckpt_dir, tag)):
                _remove_marker(saving_marker(self.ckpt_dir, tag))  # it committed, then the process died
            log.info("checkpoint %s already complete; not rewritten", tag_dir)
            self.last_saved_step = step
            return tag_dir
        marker = saving_marker(self.ckpt_dir, tag)
        if self.rank == 0:
            if os.path.exists(tag_dir):
                clear_leftover(tag_dir)
            write_atomic(marker, f"{os.getpid()}\n")  # from here on, tag_dir is a save of ours
        self._barrier()
        error = None
        try:
            engine.save_checkpoint(self.ckpt_dir, tag, client_state={}, save_latest=False)
            rng_dir = os.path.join(tag_dir, "rng")
            os.makedirs(rng_dir, exist_ok=True)
            save_state(capture_rng_state(), rng_dir, f"rank-{self.rank:05d}")
            if self.rank == 0:
                save_state(trainer_state, tag_dir, TRAINER_STATE_JSON.removesuffix(".json"))
                self._write_run_files(tag_dir)
        except (OSError, RuntimeError) as e:
            error = e
        if self._barrier_bool(error is not None):
            if self.rank == 0:
                shutil.rmtree(tag_dir, ignore_errors=True)
                _remove_marker(marker)
            detail = f": {error}" if error is not None else " (another rank failed; see its log)"
            raise CheckpointError(
                f"could not write checkpoint {tag_dir}{detail}; the previous checkpoint and "
                f"{os.path.join(self.ckpt_dir, LATEST_FILE)} are unchanged. Free disk space or fix "
                "permissions."
            ) from error
        if self.rank == 0:
            try:
                write_complete_record(
                    tag_dir,
                    step=step,
                    world_size=self.world_size,
                    config_hash=self.config_hash,
                    identity=self.run.identity,
                    master_param_groups=master_param_groups(engine),
                )
                fsync_dir(tag_dir)
                write_atomic(os.path.join(self.ckpt_dir, LATEST_FILE), tag + "\n")
                _remove_marker(marker)  # committed
            except OSError as e:
                error = e
        if self._barrier_bool(error is not None):
            if self.rank == 0:
                shutil.rmtree(tag_dir, ignore_errors=True)
                _remove_marker(marker)
            raise CheckpointError(f"could not commit checkpoint {tag_dir}: {error}; `latest` unchanged")
        self._last_save_time = time.monotonic()
        self.last_saved_step = step
        if self.rank == 0:
            self.prune()
        self._barrier()
        log.info("saved checkpoint %s", tag_dir)
        return tag_dir

    def _write_run_files(self, tag_dir: str) -> None:
        """Rank 0: the resolved config, the model's HF config and a copy of the tokenizer, so that the
        checkpoint says what it was trained with and export rebuilds the model and ships the tokenizer the
        weights belong to (fsynced)."""
        if self.run.config is not None:
            write_atomic(os.path.join(tag_dir, CONFIG_FILE), yaml.safe_dump(self.run.config, sort_keys=False))
        if self.run.hf_config is not None:
            write_atomic(os.path.join(tag_dir, HF_CONFIG_FILE), self.run.hf_config)
        if self.run.tokenizer_dir is not None:
            dst_dir = os.path.join(tag_dir, TOKENIZER_DIR)
            os.makedirs(dst_dir, exist_ok=True)
            for name in self.run.tokenizer_files:
                dst = os.path.join(dst_dir, name)
                shutil.copyfile(os.path.join(self.run.tokenizer_dir, name), dst)
                fsync_file(dst)
            fsync_dir(dst_dir)

    def prune(self) -> list[str]:
        """Delete complete checkpoints beyond keep_last unless their step is a multiple of keep_every.

        Incomplete directories older than the newest complete one are cleared (`clear_leftover`: deleted
        when a save of ours left them half-written, else moved to .rejected/). Returns the deleted or
        moved tag directories. Rank 0 only.
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
            else:
                clear_leftover(tag_dir)
                deleted.append(tag_dir)
                continue
            shutil.rmtree(tag_dir, ignore_errors=True)  # a complete checkpoint of ours beyond retention
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
        return resolve_checkpoint(spec, label=f"train.resume={spec}")

    def resume(self, engine, spec: str) -> dict | None:
        """Load the checkpoint `spec` names into `engine` and return our trainer_state (None: fresh).

        Every rank calls this. First the checkpoint's recorded identity (model shape, tokenizer, data
        build, seq_len, seed) must match this run's, except for the changes train.resume_allow_changed
        accepts; other config changes are logged in one warning line. Then DeepSpeed's module,
        optimizer and LR scheduler states (every file read weights-only) and this rank's RNG states are
        loaded, and the learning rate is set from this run's schedule at the resumed step. The trainer
        state gains 'checkpoint' (the tag dir) and 'saved_world_size'. A checkpoint from another world
        size is loaded through DeepSpeed's universal checkpoint format (ZeRO partitions re-cut; not
        bitwise, dropout RNG not restored). Raises CheckpointError for an invalid explicit path, an
        identity mismatch (before anything is loaded) or a failing load.
        """
        found = self.resolve(spec)
        if found is None:
            return None
        tag_dir, record = found
        saved_world = int(record["world_size"])
        accepted = check_resume_identity(
            tag_dir, record["identity"], self.run.identity, self.run.allow_changed
        )
        if accepted:
            log.warning("resuming %s with changes you allowed: %s", tag_dir, "; ".join(accepted))
        changed = self._config_changes(tag_dir, record)
        if changed:
            log.warning("resuming %s with changed settings: %s", tag_dir, "; ".join(changed))
        log.info("resuming from %s (step %s, saved by %d ranks)", tag_dir, record["step"], saved_world)
        self._load_engine(engine, tag_dir, record)
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

    def _config_changes(self, tag_dir: str, record: dict) -> list[str]:
        """The real config changes since the checkpoint (see identity.config_changes)."""
        if self.run.config is None or CONFIG_FILE not in record["files"]:
            return []
        path = os.path.join(tag_dir, CONFIG_FILE)
        try:  # the config loader's bounded reader: a checkpoint is untrusted like any config
            saved = read_yaml_mapping(path)
        except ConfigError as e:
            raise CheckpointError(f"{e}; the checkpoint is unusable") from None
        return config_changes(saved, self.run.config, identity_keys=self.run.identity)

    def _load_engine(self, engine, tag_dir: str, record: dict) -> None:
        """engine.load_checkpoint (weights-only), through a universal checkpoint when ZeRO partitions must
        be re-cut; then the LR of this run's schedule at the resumed step."""
        saved_world = int(record["world_size"])
        partitioned = any(rel.endswith("optim_states.pt") for rel in record["files"])
        elastic = partitioned and saved_world != self.world_size
        load_dir, tag = os.path.split(tag_dir)
        if elastic:
            # DeepSpeed refuses ZeRO optimizer partitions of another world size; its universal format
            # holds each parameter's fp32 weights and optimizer moments whole, so any world size can load
            load_dir = os.path.join(self.ckpt_dir, UNIVERSAL_DIR)
            prepare_universal(tag_dir, load_dir, rank=self.rank, agree=self._barrier_bool)
            log.warning(
                "elastic resume: %d -> %d ranks via a universal checkpoint", saved_world, self.world_size
            )
        engine._config.load_universal_checkpoint = elastic  # DeepSpeed reads this flag only from its config
        base_lrs = fresh_base_lrs(engine)
        error = None
        try:
            with deepspeed_loads_weights_only():
                load_path, _ = engine.load_checkpoint(
                    load_dir, tag, load_optimizer_states=True, load_lr_scheduler_states=True
                )
            if load_path is None:
                error = CheckpointError(f"DeepSpeed found no checkpoint files in {tag_dir}")
        except (RuntimeError, ValueError, AssertionError, KeyError, OSError) as e:
            error = CheckpointError(
                f"could not load {tag_dir} (saved by {saved_world} ranks, now {self.world_size}): "
                + " ".join(str(e).split())
            )
            error.__cause__ = e
        finally:
            engine._config.load_universal_checkpoint = False
        failed = self._barrier_bool(error is not None)  # a rank that cannot load stops them all
        if elastic and self.rank == 0:
            shutil.rmtree(load_dir, ignore_errors=True)
        if failed:
            raise error or CheckpointError(f"could not load {tag_dir}: another rank failed (see its log)")
        apply_lr_schedule(engine, base_lrs)

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
