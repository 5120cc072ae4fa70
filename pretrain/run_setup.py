"""Everything a training run is built from, in order: row sources -> model -> run identity (tokenizer
check) -> run_dir check and lock -> engine -> collator, sampler, loaders -> checkpoint manager (and
resume) -> monitors and metrics. `build_run` returns it as one `Run`; the loop in pretrain/trainer.py
only trains it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from data_pipeline.errors import os_error_line
from pretrain.checkpoint.identity import describe_run, source_tokenizer_files
from pretrain.checkpoint.manager import CheckpointManager
from pretrain.checkpoint.run_lock import RunLock
from pretrain.config import Config, ConfigError, config_hash, save_config
from pretrain.data.loader import TrainLoader, ValidationLoader
from pretrain.data.masking import MaskingCollator
from pretrain.data.row_source import check_document_starts, is_mixture, open_row_sources, resolve_seq_len
from pretrain.data.sampler import GlobalBatchSampler
from pretrain.metrics import MetricsLogger
from pretrain.models.registry import build_model
from pretrain.runtime.collectives import Collectives, StepAgreement
from pretrain.runtime.distributed import DistInfo, set_determinism
from pretrain.runtime.engine import initialize_engine
from pretrain.runtime.faults import Faults
from pretrain.runtime.health import NonFiniteMonitor, Stage0StepGuard

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Run:
    """A built run and its progress: what the loop needs, nothing more.

    `lock` is the run dir's lock (rank 0; None on the others), released by `release`.
    `step` (optimizer steps done), `tokens` (training tokens consumed) and `loader_state` (the loader
    after the last step trained; it runs one step ahead) are the progress the loop advances and a
    checkpoint records (`trainer_state`).
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
    global_batch: int
    flops_per_token: float
    step: int
    tokens: int
    loader_state: dict

    def release(self) -> None:
        """Give back the run dir's lock (rank 0); idempotent."""
        if self.lock is not None:
            self.lock.release()

    def trainer_state(self) -> dict:
        """What a checkpoint records of the run's progress (JSON values; see CheckpointManager.save)."""
        consumed = self.loader_state["consumed_samples"]
        return {
            "step": self.step,
            "tokens": self.tokens,
            "consumed_samples": consumed,
            "loader": self.loader_state,
            "nonfinite": self.monitor.state_dict(),
        }


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


def _build_sampler(cfg: Config, source, info: DistInfo, engine) -> GlobalBatchSampler:
    """The sample order of this rank over `source`, checked against the engine's accumulation steps:
    train_step takes the sampler's last micro-batch of a step to be DeepSpeed's accumulation boundary. A
    mixture orders its rows itself: the sampler then visits its samples in order."""
    t = cfg.train
    sampler = GlobalBatchSampler(
        len(source),
        global_batch_size=t.global_batch(info.world_size),
        micro_batch_size=t.micro_batch_size,
        seed=t.seed,
        rank=info.rank,
        world_size=info.world_size,
        shuffle=not is_mixture(source),
    )
    if sampler.grad_accum_steps != engine.gradient_accumulation_steps():
        raise RuntimeError(
            f"the sampler accumulates {sampler.grad_accum_steps} micro-batches per step but the DeepSpeed "
            f"engine {engine.gradient_accumulation_steps()}; the two must come from one train config"
        )
    return sampler


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
    check_run_dir_writable(cfg.run_dir, agreement, rank)
    lock = take_run_lock(cfg.run_dir, agreement, rank)
    try:
        return _build_locked(
            cfg, info, comm, agreement, lock, on_gpu, train_source, val_source, model, seq_len, description
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build_locked(
    cfg, info, comm, agreement, lock, on_gpu, train_source, val_source, model, seq_len, description
) -> Run:
    """The rest of `build_run`, once the run dir's lock is held."""
    rank, world, t = info.rank, info.world_size, cfg.train
    if info.is_main:
        log.info(
            "building the DeepSpeed engine: ZeRO-%d, %s, %d rank(s)", cfg.zero.stage, cfg.precision, world
        )
    engine = initialize_engine(cfg, model.to(info.device), world, on_gpu=on_gpu)

    collator = MaskingCollator(
        cfg.masking,
        special_ids=train_source.special_ids,
        vocab_size=train_source.vocab_size,
        seed=t.seed,
        seq_len=seq_len,
        batch_keys=model.batch_keys,
    )
    sampler = _build_sampler(cfg, train_source, info, engine)
    val_loader = ValidationLoader(val_source, collator, t.micro_batch_size, rank, world, cfg.eval.max_batches)
    checkpoints = CheckpointManager(
        cfg.run_dir,
        cfg.checkpoint,
        rank=rank,
        world_size=world,
        config_hash=config_hash(cfg),
        run=description,
        collectives=comm,
    )
    monitor = NonFiniteMonitor(cfg.health.max_nonfinite_skips, rank=rank)
    faults = Faults.for_rank(cfg.debug, rank)

    state = checkpoints.resume(engine, t.resume) or {}
    step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
    reader = faults.reader(train_source, micro_batches_per_step=t.grad_accum_steps, first_step=step + 1)
    pin = info.device if on_gpu else None  # pin_memory() raises without CUDA
    loader = TrainLoader(reader, sampler, collator, cfg.data.prefetch_batches, pin_device=pin)
    if state:
        loader.load_state_dict(state["loader"])
        monitor.load_state_dict(state["nonfinite"])
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
    return Run(
        cfg=cfg,
        info=info,
        comm=comm,
        agreement=agreement,
        engine=engine,
        loader=loader,
        val_loader=val_loader,
        checkpoints=checkpoints,
        lock=lock,
        monitor=monitor,
        metrics=metrics,
        faults=faults,
        guard=guard,
        global_batch=sampler.global_batch_size,
        flops_per_token=model.flops_per_token(seq_len, cfg.masking.probability),
        step=step,
        tokens=tokens,
        loader_state=loader.state_dict(),
    )
