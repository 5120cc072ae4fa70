"""The training loop, top to bottom: data -> model -> engine -> resume -> steps (eval, checkpoint) -> end.

Loss normalisation: a step's MLM loss is the summed cross-entropy over every masked token of every
micro-batch on every rank, divided by that global masked-token count (all-reduced before the first
forward). DeepSpeed averages gradients over ranks, so each micro-batch back-propagates
`mlm_loss_sum * world / global_count` with DeepSpeed's own 1/grad_accum scaling turned off
(`scale_wrt_gas=False`). The NSP/SOP loss is normalised the same way by the global pair count.

Host syncs and collectives: the loader counts tokens on the CPU batch; losses, counts and accuracies are
summed on the device; a step sends two collectives of its own (the counts before the first forward, and
the end-of-step agreement that carries the sums and every rank's wishes, pretrain/collectives.py) and
fetches from the device once, after the agreement. (DeepSpeed's fp16/bf16/ZeRO optimizers check for
overflow on the host themselves, as does Stage0StepGuard for ZeRO-0 fp32.)

Determinism: model init is seeded by train.seed, sample order and masks are pure functions of
(seed, epoch, index) (pretrain/data.py, pretrain/masking.py), and dropout is reseeded at every step from
(seed, step, rank), so the same config gives the same per-step losses bit for bit on CPU (on GPU with
train.deterministic) and a resumed run needs no RNG state to continue exactly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from pretrain.checkpoint import CheckpointManager
from pretrain.collectives import Collectives, StepAgreement, to_host
from pretrain.config import Config, config_hash, save_config
from pretrain.data import GlobalBatchSampler, LoaderStep, TrainLoader, ValidationLoader, resolve_seq_len
from pretrain.distributed import DistInfo, set_determinism
from pretrain.engine import initialize_engine, loss_scale
from pretrain.faults import Faults
from pretrain.health import LossScaleFloorError, NonFiniteMonitor, PeerFailedError, Stage0StepGuard
from pretrain.masking import MaskingCollator
from pretrain.metrics import MetricsLogger, memory_stats, mfu
from pretrain.model import build_model
from pretrain.run_identity import describe_run
from pretrain.signals import EXIT_PREEMPTED, PreemptionHandler

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed for dropout in optimizer step `step` on `rank`: a hash of (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def open_data(cfg: Config):
    """(train reader, validation reader, vocab size, special ids dict) of the shards at data.path.

    Raises data_pipeline.errors.DataError naming the file when the manifest or a shard is missing or
    has the wrong size.
    """
    from data_pipeline.shards import ShardReader

    train_reader = ShardReader(cfg.data.path, split="train")
    val_reader = ShardReader(cfg.data.path, split="validation")
    tokenizer = train_reader.manifest.tokenizer
    vocab_size, special_ids = tokenizer["vocab_size"], tokenizer["special_ids"]
    return train_reader, val_reader, int(vocab_size), dict(special_ids)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """`batch` on `device`; asynchronous from pinned memory (TrainLoader pins where CUDA is present)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(engine, loader: ValidationLoader, comm: Collectives) -> dict:
    """Validation MLM loss, perplexity, masked-token accuracy (and pair accuracy) over all ranks."""
    engine.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=comm.device)
    with torch.no_grad():
        for batch in loader:
            out = engine(**to_device(batch, comm.device))
            values = (out.mlm_loss_sum, out.mlm_correct, out.num_masked, out.pair_correct, out.num_pairs)
            sums += torch.stack([v.to(torch.float64) for v in values])
    engine.train()
    loss_sum, correct, masked, pair_correct, pairs = to_host(comm.sum_(sums))
    loss = loss_sum / max(masked, 1.0)
    record = {"eval_loss": loss, "eval_perplexity": float(np.exp(min(loss, 50.0))),
              "eval_accuracy": correct / max(masked, 1.0)}  # fmt: skip
    if pairs:
        record["eval_pair_accuracy"] = pair_correct / pairs
    return record


@dataclass
class StepResult:
    """One optimizer step as it stands before the end-of-step agreement (nothing fetched yet).

    sums: float64 [MLM loss sum, pair loss sum, masked tokens predicted right] of this rank, on the
    device; counts: float64 [tokens, masked tokens, pairs] over all ranks, on the device; bad_loss: 0-dim
    bool, this rank's loss was NaN/Inf; grad_norm: DeepSpeed's (a device tensor or a float) or ours
    (ZeRO-0 fp32), None when unknown; lr: the rate the update used; loss_scale: the fp16 scale the
    backward used (None otherwise); skipped: the optimizer dropped the update (overflow or non-finite).
    """

    sums: torch.Tensor
    counts: torch.Tensor
    bad_loss: torch.Tensor
    grad_norm: float | torch.Tensor | None
    lr: float
    loss_scale: float | None
    skipped: bool


def train_step(
    engine, data: LoaderStep, comm: Collectives, *, step: int, faults: Faults, guard: Stage0StepGuard | None
) -> StepResult:
    """Forward and backward over this rank's micro-batches of optimizer step `step` (1-based) and the
    update; sends one collective (the global counts) and fetches nothing from the device."""
    batches = [to_device(b, comm.device) for b in data.micro_batches]
    counts = comm.sum_(data.counts.to(comm.device, non_blocking=True))
    mlm_factor = (comm.world_size / counts[1].clamp(min=1.0)).float()
    pair_factor = (comm.world_size / counts[2].clamp(min=1.0)).float()
    lr = float(engine.get_lr()[0])  # the rate this step's update uses
    scale = loss_scale(engine) if engine.fp16_enabled() else None
    skipped_before = engine.skipped_steps
    sums = torch.zeros(3, dtype=torch.float64, device=comm.device)
    computed_norm = None
    for i, b in enumerate(batches):
        out = engine(**b)
        mlm_loss_sum = out.mlm_loss_sum
        if i == 0 and step in faults.nan_loss:
            mlm_loss_sum = mlm_loss_sum * float("nan")
        loss = mlm_loss_sum * mlm_factor
        if "pair_labels" in b:
            loss = loss + out.pair_loss_sum * pair_factor
        if i == 0 and step in faults.nonfinite_grad:
            loss = loss * float("inf")  # non-finite gradients; the logged loss stays finite
        engine.backward(loss, scale_wrt_gas=False)
        if guard is not None and i == len(batches) - 1:  # before the boundary's update
            computed_norm = guard.check(engine.module)
        engine.step()
        stats = (mlm_loss_sum.detach(), out.pair_loss_sum.detach(), out.mlm_correct)
        sums += torch.stack([v.to(torch.float64) for v in stats])
    norm = engine.get_global_grad_norm()
    return StepResult(
        sums, counts, NonFiniteMonitor.is_bad(sums[0] + sums[1]), computed_norm if norm is None else norm,
        lr, scale, engine.skipped_steps > skipped_before,
    )  # fmt: skip


def _next_data(loader: TrainLoader) -> tuple[LoaderStep | None, BaseException | None]:
    """(the next step's data, None), or (None, the error the loader raised): a data error on one rank is
    agreed with the others before anyone starts the step, so every rank stops together."""
    try:
        return next(loader), None
    except Exception as exc:  # any failure to produce data stops the run, agreed by all ranks
        return None, exc


def _stop_if_a_rank_failed(error: BaseException | None, failed_ranks: list[int], step: int) -> None:
    """Raise this rank's data error, or PeerFailedError naming the ranks that had one."""
    if error is not None:
        raise error
    if failed_ranks:
        raise PeerFailedError(
            f"rank(s) {failed_ranks} could not read the data of step {step + 1}; every rank stops "
            "(the error is in that rank's log)"
        )


def train(cfg: Config, info: DistInfo, *, on_gpu: bool) -> int:
    """Train `cfg` on this rank; returns the exit code (0 done, EXIT_PREEMPTED after a signal-save).

    Raises ConfigError / DataError / CheckpointError for bad input (before the first step),
    NonFiniteLossError when losses stay NaN/Inf longer than the policy allows, LossScaleFloorError when
    an fp16 step overflows at fp16.min_loss_scale, PeerFailedError when another rank's data failed.
    """
    set_determinism(cfg.train.deterministic)
    rank, world = info.rank, info.world_size
    comm = Collectives(info.device)
    agreement = StepAgreement(comm)
    train_reader, val_reader, vocab_size, special_ids = open_data(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(
        cfg.model, vocab_size=vocab_size, pad_id=special_ids["pad"],
        pair_head=cfg.model.pair_head == "auto" and train_reader.has_pairs,
        tokenizer_source=f"the tokenizer of the shards in {cfg.data.path}",
    )  # fmt: skip
    seq_len = resolve_seq_len(
        cfg.data, shards_seq_len=train_reader.seq_len, shards_dir=cfg.data.path,
        max_positions=model.config.max_position_embeddings,
    )  # fmt: skip
    flops_per_token = model.flops_per_token(seq_len, cfg.masking.probability)
    engine = initialize_engine(cfg, model.to(info.device), world, on_gpu=on_gpu)

    collator = MaskingCollator(
        cfg.masking, special_ids=special_ids, vocab_size=vocab_size, seed=cfg.train.seed, seq_len=seq_len
    )
    t = cfg.train
    global_batch = t.micro_batch_size * t.grad_accum_steps * world
    sampler = GlobalBatchSampler(
        len(train_reader), global_batch_size=global_batch, micro_batch_size=t.micro_batch_size,
        seed=t.seed, rank=rank, world_size=world,
    )  # fmt: skip
    val_loader = ValidationLoader(val_reader, collator, t.micro_batch_size, rank, world, cfg.eval.max_batches)
    checkpoints = CheckpointManager(
        cfg.run_dir, cfg.checkpoint, rank=rank, world_size=world, config_hash=config_hash(cfg),
        run=describe_run(cfg, model, train_reader.manifest, seq_len=seq_len), collectives=comm,
    )  # fmt: skip
    monitor = NonFiniteMonitor(cfg.health.max_nonfinite_skips, rank=rank)
    debug = cfg.debug
    faults = Faults.for_rank(debug, rank)

    state = checkpoints.resume(engine, t.resume) or {}
    step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
    reader = faults.reader(train_reader, micro_batches_per_step=t.grad_accum_steps, first_step=step + 1)
    pin = info.device if on_gpu else None  # pin_memory() raises without CUDA
    loader = TrainLoader(reader, sampler, collator, cfg.data.prefetch_batches, pin_device=pin)
    if state:
        loader.load_state_dict(state["loader"])
        monitor.load_state_dict(state["nonfinite"])
    loader_state = loader.state_dict()  # after the last step trained (the loader runs one step ahead)
    if info.is_main:
        os.makedirs(cfg.run_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.run_dir, "config.yaml"))
    metrics = MetricsLogger(
        cfg.run_dir, is_main=info.is_main, max_steps=t.max_steps, log_every_steps=t.log_every_steps,
        tensorboard=cfg.metrics.tensorboard, start_step=step,
    )  # fmt: skip
    if step == 0:
        metrics.log_eval({"step": 0, **evaluate(engine, val_loader, comm)})

    def trainer_state() -> dict:
        return {"step": step, "tokens": tokens, "consumed_samples": loader_state["consumed_samples"],
                "loader": loader_state, "nonfinite": monitor.state_dict()}  # fmt: skip

    started = time.monotonic()
    # A checkpoint at max_steps or at an eval step was saved after that step's evaluation.
    evaluated = (
        step == 0 or step >= t.max_steps or bool(cfg.eval.every_steps and step % cfg.eval.every_steps == 0)
    )
    exit_code, last_eval_step = 0, step if evaluated else None
    # ZeRO-0 fp32 is DeepSpeed's one path without a norm or an overflow check: we supply both.
    guard = Stage0StepGuard(engine.optimizer) if cfg.zero.stage == 0 and cfg.precision == "fp32" else None
    issued = comm.issued
    with loader, PreemptionHandler() as preemption:
        data, data_error = _next_data(loader) if step < t.max_steps else (None, None)
        if step < t.max_steps:  # the first step's data, agreed like every later step's
            first = agreement.agree(torch.zeros(0, device=comm.device), {"error": data_error is not None})
            _stop_if_a_rank_failed(data_error, first.ranks("error"), step)
        while step < t.max_steps and (t.max_tokens is None or tokens < t.max_tokens):
            step_start = time.perf_counter()
            torch.manual_seed(step_seed(t.seed, step, rank))  # dropout: derivable, nothing to checkpoint
            result = train_step(engine, data, comm, step=step + 1, faults=faults, guard=guard)
            step += 1
            trained, loader_state = data, data.state_after
            samples = comm.gather_indices(trained.rank_indices) if debug.log_sample_indices else None
            data, data_error = _next_data(loader) if step < t.max_steps else (None, None)
            norm = result.grad_norm
            norm_on_device = isinstance(norm, torch.Tensor)
            fetch = [result.counts]
            if norm_on_device:
                fetch.append(norm.detach().to(comm.device, torch.float64).reshape(1))
            wishes = {
                "nonfinite": result.bad_loss,
                "preempt": preemption.requested,
                "out_of_time": t.max_minutes is not None and time.monotonic() - started >= t.max_minutes * 60,
                "save": checkpoints.should_save(step),
                "scale_floor": result.skipped
                and result.loss_scale is not None
                and result.loss_scale <= cfg.fp16.min_loss_scale,
                "error": data_error is not None,
            }
            # The one host sync of the step: sums and wishes of every rank, agreed in one all-reduce.
            agreed = agreement.agree(result.sums, wishes, fetch=torch.cat(fetch))
            step_tokens, g_masked, g_pairs = agreed.fetched[:3]
            # Names the bad rank(s); a bad step's update was already dropped (DeepSpeed, Stage0StepGuard);
            # raises NonFiniteLossError past health.max_nonfinite_skips, before any save.
            monitor.update(agreed.ranks("nonfinite"), step)
            if agreed.any("scale_floor"):
                raise LossScaleFloorError(
                    f"fp16 step {step} overflowed with the loss scale at its floor "
                    f"(fp16.min_loss_scale={cfg.fp16.min_loss_scale}); {engine.skipped_steps} step(s) "
                    "skipped so far; stopping. The last good checkpoint is kept: lower optim.lr, raise "
                    "optim.warmup_steps or use bf16 before resuming"
                )
            tokens += int(step_tokens)
            mlm_sum, pair_sum, correct = agreed.sums
            mlm_loss = mlm_sum / max(g_masked, 1.0)
            pair_loss = pair_sum / g_pairs if g_pairs else 0.0
            elapsed = time.perf_counter() - step_start
            record = {
                "step": step, "loss": mlm_loss + pair_loss, "mlm_loss": mlm_loss,
                "mlm_accuracy": correct / max(g_masked, 1.0), "lr": result.lr,
                "grad_norm": agreed.fetched[3] if norm_on_device else (None if norm is None else float(norm)),
                "tokens_per_s": step_tokens / elapsed, "samples_per_s": global_batch / elapsed,
                "tokens": tokens, "skipped_steps": int(engine.skipped_steps),
                "nonfinite_skipped": monitor.total_skipped, **memory_stats(info.device),
            }  # fmt: skip
            if samples is not None:
                record["epoch"], record["samples"] = trained.epoch, samples
            if g_pairs:
                record["pair_loss"] = pair_loss
            if result.loss_scale is not None:
                record["loss_scale"] = result.loss_scale
            utilisation = mfu(
                record["tokens_per_s"], flops_per_token, world, cfg.metrics.peak_tflops_per_device
            )
            if utilisation is not None:
                record["mfu"] = utilisation
            if debug.log_collectives:  # since the previous record: includes that step's eval and save
                record["collectives"], issued = comm.issued - issued, comm.issued
            metrics.log_step(record)
            _stop_if_a_rank_failed(data_error, agreed.ranks("error"), step)  # this step trained fine

            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
                metrics.log_eval({"step": step, **evaluate(engine, val_loader, comm)})
                last_eval_step = step
            if preemption.agreed(agreed.any("preempt")):
                checkpoints.save(engine, trainer_state(), step)
                exit_code = EXIT_PREEMPTED
                break
            if agreed.any("save"):
                checkpoints.save(engine, trainer_state(), step)
            if agreed.any("out_of_time"):
                log.info("train.max_minutes=%s reached at step %d; stopping", t.max_minutes, step)
                break

        if exit_code == 0:
            if last_eval_step != step:
                metrics.log_eval({"step": step, **evaluate(engine, val_loader, comm)})
            if checkpoints.last_saved_step != step:
                checkpoints.save(engine, trainer_state(), step)
    metrics.close()
    if info.is_main:
        log.info("finished at step %d (%d tokens); run dir %s", step, tokens, cfg.run_dir)
    return exit_code
