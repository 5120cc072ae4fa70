"""Everything a training run is built from, in order: row sources (every phase's) -> model -> run
identity (tokenizer check) -> run_dir check and lock -> engine -> checkpoint manager (and resume) ->
the resumed phase's collator, sampler, loaders -> monitors and metrics. `build_run` returns it as one
`Run`; the loop in pretrain/trainer.py only trains it (and `enter_phase` at a phase boundary)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from data_pipeline.errors import os_error_line
from pretrain.checkpoint.identity import RunDescription, describe_run, source_tokenizer_files
from pretrain.checkpoint.manager import CheckpointManager
from pretrain.checkpoint.run_lock import RunLock
from pretrain.config import Config, ConfigError, config_hash, save_config
from pretrain.config.phases import lr_segments
from pretrain.data.loader import TrainLoader, ValidationLoader
from pretrain.data.row_source import check_document_starts, open_row_sources, resolve_seq_len
from pretrain.metrics import MetricsLogger
from pretrain.models.registry import build_model
from pretrain.phases import PhaseLoaders, RunPhases
from pretrain.runtime.collectives import Collectives, StepAgreement
from pretrain.runtime.distributed import DistInfo, set_determinism
from pretrain.runtime.engine import initialize_engine
from pretrain.runtime.faults import Faults
from pretrain.runtime.health import NonFiniteMonitor, Stage0StepGuard
from pretrain.runtime.lr_schedule import phased_schedule

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Run:
    """A built run and its progress: what the loop needs, nothing more.

    `cfg` is the config of the phase being trained (pretrain/config/phases.py; the run's own config
    when it has no phases), `phase` its index. `lock` is the run dir's lock (rank 0; None on the others),
    released by `release`. `step` (optimizer steps done), `tokens` (training tokens consumed),
    `loader_state` (the loader after the last step trained; it runs one step ahead) and `loader_phase`
    (the phase whose stream that state belongs to) are the progress the loop advances and a checkpoint
    records (`trainer_state`), with `branched_from` (the other runs' checkpoints this one continued).
    """

    cfg: Config
    info: DistInfo
    comm: Collectives
    agreement: StepAgreement
    engine: object
    loader: TrainLoader
    val_loader: ValidationLoader
    checkpoints: CheckpointManager
    lock: RunLock | None
    monitor: NonFiniteMonitor
    metrics: MetricsLogger
    faults: Faults
    guard: Stage0StepGuard | None
    flops_per_token: float
    phases: RunPhases
    phase: int
    description: RunDescription
    open_phase: Callable[[int, int, dict | None], PhaseLoaders]
    step: int
    tokens: int
    loader_state: dict
    loader_phase: int
    branched_from: list

    def release(self) -> None:
        """Give back the run dir's lock (rank 0); idempotent."""
        if self.lock is not None:
            self.lock.release()

    def trainer_state(self) -> dict:
        """What a checkpoint records of the run's progress (JSON values; see CheckpointManager.save)."""
        consumed = self.loader_state["consumed_samples"]
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "consumed_samples": consumed,
            "loader": self.loader_state,
            "phase": self.loader_phase,
            "nonfinite": self.monitor.state_dict(),
        }
        if self.branched_from:
            state["branched_from"] = self.branched_from
        return state


def enter_phase(run: Run, phase: int) -> None:
    """Switch `run` to `phase` at its current step: its config, loaders (the sampler continues the
    stream's state or starts the phase's new stream), FLOPs per token, and the identity later
    checkpoints record. Closes the previous loader (whose prefetched steps are dropped: the loader
    state is what was trained). Every rank calls it at the same step."""
    phases = run.phases
    same_stream = phases.streams[phase] == phases.streams[run.loader_phase]
    if run.loader is not None:
        run.loader.close()
    loaders = run.open_phase(phase, run.step, run.loader_state if same_stream else None)
    run.cfg, run.phase = phases.configs[phase], phase
    run.loader, run.val_loader, run.flops_per_token = (
        loaders.loader,
        loaders.val_loader,
        loaders.flops_per_token,
    )
    run.loader_state, run.loader_phase = loaders.loader.state_dict(), phase
    run.checkpoints.run = _recorded(run.description, phases, phase, run.branched_from)
    if run.info.is_main and phases.cfg.phases:
        log.info(
            "phase %d from step %d (%d tokens): seq_len %d, %s sample stream",
            phase,
            run.step,
            run.tokens,
            loaders.seq_len,
            "continuing the" if same_stream else "a new",
        )


def _recorded(description: RunDescription, phases: RunPhases, phase: int, branched_from: list):
    """The RunDescription later checkpoints record: the started phases, and the runs branched from."""
    identity = phases.identity(description.identity, phase)
    if branched_from:
        identity["branched_from"] = branched_from
    return dataclasses.replace(description, identity=identity)


def check_run_dir_writable(run_dir: str, agreement: StepAgreement, rank: int) -> None:
    """Create `run_dir` and write and remove a probe file in it, on every rank, before anything costly.

    Every rank calls this (one collective). Raises ConfigError on every rank when any rank cannot: the
    failing rank names the path and the system's reason, the others name the failing ranks.
    """
    probe = os.path.join(run_dir, f".write-probe-rank{rank}-{os.getpid()}")
    error = None
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("probe\n")
        os.remove(probe)
    except OSError as exc:
        error = exc
    failed = agreement.agree(
        torch.zeros(0, device=agreement.collectives.device), {"error": error is not None}
    )
    if error is not None:
        raise ConfigError(f"run_dir={run_dir} cannot be written: {os_error_line(error, run_dir, 'run_dir')}")
    if failed.any("error"):
        raise ConfigError(
            f"run_dir={run_dir} cannot be written on rank(s) {failed.ranks('error')} (see their log); "
            "choose a run_dir every rank can write"
        )


def take_run_lock(run_dir: str, agreement: StepAgreement, rank: int) -> RunLock | None:
    """Rank 0 takes `run_dir`'s lock (pretrain/checkpoint/run_lock.py); returns it (None on other ranks).

    Every rank calls this (one collective). Raises ConfigError on every rank when another run holds it:
    rank 0 names the holder, the others point to rank 0's log.
    """
    lock, error = None, None
    if rank == 0:
        lock = RunLock(run_dir)
        try:
            lock.acquire()
        except ConfigError as exc:
            error = exc
    failed = agreement.agree(
        torch.zeros(0, device=agreement.collectives.device), {"error": error is not None}
    )
    if error is not None:
        raise error
    if failed.any("error"):
        if lock is not None:
            lock.release()
        raise ConfigError(f"run_dir={run_dir} is in use by another run (see rank 0's log)")
    return lock


def _build_model(cfg: Config, source) -> tuple:
    """(the model of cfg.model, seeded by train.seed, for the rows of `source`; the sequence length)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(
        cfg.model,
        vocab_size=source.vocab_size,
        pad_id=source.special_ids["pad"],
        rows_have_pairs=source.has_pairs,
        tokenizer_source=f"the tokenizer of {source.name}",
    )
    return model, resolve_seq_len(cfg.data, source, max_positions=model.max_positions)


def build_run(cfg: Config, info: DistInfo, *, on_gpu: bool) -> Run:
    """Build the run of `cfg` on this rank, resumed per train.resume; every rank calls it together.

    Raises ConfigError / DataError / CheckpointError for bad input (including a run_dir some rank cannot
    write, checked before the engine is built); nothing of a training step has run yet.
    """
    set_determinism(cfg.train.deterministic)
    rank = info.rank
    comm = Collectives(info.device)
    agreement = StepAgreement(comm)
    train_source, val_source = open_row_sources(cfg.data, seed=cfg.train.seed)
    # Before the model and the engine: a replaced tokenizer dir, or a manifest whose vocab_size is not
    # the tokenizer's, must not cost an embedding or a ZeRO build to be found out.
    tokenizer_files = source_tokenizer_files(train_source)
    model, seq_len = _build_model(cfg, train_source)
    for source in (train_source, val_source):  # before the engine: old shards cannot serve this model
        check_document_starts(source, model.batch_keys, cfg.model.arch)
    description = describe_run(cfg, model, train_source, seq_len=seq_len, tokenizer_files=tokenizer_files)
    phases = RunPhases(cfg, (train_source, val_source), model)  # every phase's rows, checked up front
    check_run_dir_writable(cfg.run_dir, agreement, rank)
    lock = take_run_lock(cfg.run_dir, agreement, rank)
    try:
        return _build_locked(cfg, info, comm, agreement, lock, on_gpu, model, phases, description)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build_locked(cfg, info, comm, agreement, lock, on_gpu, model, phases: RunPhases, description) -> Run:
    """The rest of `build_run`, once the run dir's lock is held."""
    rank, world, t = info.rank, info.world_size, cfg.train
    if info.is_main:
        log.info(
            "building the DeepSpeed engine: ZeRO-%d, %s, %d rank(s)", cfg.zero.stage, cfg.precision, world
        )
    schedule = phased_schedule(lr_segments(cfg, phases.configs))
    engine = initialize_engine(cfg, model.to(info.device), world, on_gpu=on_gpu, schedule=schedule)
    checkpoints = CheckpointManager(
        cfg.run_dir,
        cfg.checkpoint,
        rank=rank,
        world_size=world,
        config_hash=config_hash(cfg),
        # a resume compares the phases the checkpoint had started with this run's (all of them listed)
        run=dataclasses.replace(
            description, identity=phases.identity(description.identity, len(phases.configs) - 1)
        ),
        collectives=comm,
    )
    monitor = NonFiniteMonitor(cfg.health.max_nonfinite_skips, rank=rank)
    faults = Faults.for_rank(cfg.debug, rank)

    state = checkpoints.resume(engine, t.resume) or {}
    step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
    if state:
        monitor.load_state_dict(state["nonfinite"])
    pin = info.device if on_gpu else None  # pin_memory() raises without CUDA

    def open_phase(phase: int, at_step: int, loader_state: dict | None) -> PhaseLoaders:
        return phases.loaders(
            phase, step=at_step, info=info, model=model, faults=faults, pin_device=pin, state=loader_state
        )

    if info.is_main:
        os.makedirs(cfg.run_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.run_dir, "config.yaml"))
    metrics = MetricsLogger(
        cfg.run_dir,
        is_main=info.is_main,
        max_steps=t.max_steps,
        log_every_steps=t.log_every_steps,
        tensorboard=cfg.metrics.tensorboard,
        start_step=step,
    )
    # ZeRO-0 fp32 is DeepSpeed's one path without a norm or an overflow check: we supply both.
    guard = Stage0StepGuard(engine.optimizer) if cfg.zero.stage == 0 and cfg.precision == "fp32" else None
    run = Run(
        cfg=cfg,
        info=info,
        comm=comm,
        agreement=agreement,
        engine=engine,
        loader=None,
        val_loader=None,
        checkpoints=checkpoints,
        lock=lock,
        monitor=monitor,
        metrics=metrics,
        faults=faults,
        guard=guard,
        flops_per_token=0.0,
        phases=phases,
        phase=0,
        description=description,
        open_phase=open_phase,
        step=step,
        tokens=tokens,
        loader_state=state.get("loader"),
        loader_phase=int(state.get("phase", 0)),
        branched_from=_branches(state, checkpoints.ckpt_dir),
    )
    # The phase of the checkpoint's last step, or the next one when the checkpoint ended at its start.
    enter_phase(run, phases.due(run.loader_phase, step, tokens))
    return run


def _branches(state: dict, ckpt_dir: str) -> list:
    """The checkpoints of other runs this run continues: the resumed checkpoint's list, plus that
    checkpoint itself when it is another run's (`train.resume=PATH`: a decay branch)."""
    branches = list(state.get("branched_from", []))
    tag_dir = state.get("checkpoint")
    if tag_dir and os.path.realpath(os.path.dirname(tag_dir)) != os.path.realpath(ckpt_dir):
        branches.append({"checkpoint": os.path.abspath(tag_dir), "step": int(state["step"])})
    return branches
