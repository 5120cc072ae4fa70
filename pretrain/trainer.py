"""The training loop: a built run (pretrain/run_setup.py) -> steps (`train_step`, the agreed end of the
step, the metrics record, eval, `CheckpointManager.save_if_due`) -> end.

Loss normalisation: a step's MLM loss is the summed cross-entropy over every masked token of every
micro-batch on every rank, divided by that global masked-token count (all-reduced before the first
forward). DeepSpeed averages gradients over ranks, so each micro-batch back-propagates
`mlm_loss_sum * world / global_count` with DeepSpeed's own 1/grad_accum scaling turned off
(`scale_wrt_gas=False`). The NSP/SOP loss is normalised the same way by the global pair count.

Host syncs and collectives: the loader counts tokens on the CPU batch; losses, counts and accuracies are
summed on the device; a step sends two collectives of its own (the counts before the first forward, and
the end-of-step agreement that carries the sums and every rank's flags, pretrain/runtime/collectives.py) and
fetches from the device once, after the agreement. (DeepSpeed's fp16/bf16/ZeRO optimizers check for
overflow on the host themselves, as does Stage0StepGuard for ZeRO-0 fp32.)

Determinism: model init is seeded by train.seed, sample order and masks are pure functions of
(seed, epoch, index) (pretrain/data/sampler.py,
pretrain/data/masking.py), and dropout is reseeded at every step from
(seed, step, rank), so the same config gives the same per-step losses bit for bit on CPU (on GPU with
train.deterministic) and a resumed run needs no RNG state to continue exactly.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from pretrain.config import Config
from pretrain.data.loader import LoaderStep, TrainLoader, ValidationLoader
from pretrain.run_setup import Run, build_run, enter_phase
from pretrain.runtime.collectives import Agreement, Collectives, to_host
from pretrain.runtime.distributed import DistInfo
from pretrain.runtime.engine import loss_scale, set_engine_batch
from pretrain.runtime.faults import StepFault
from pretrain.runtime.health import LossScaleFloorError, NonFiniteMonitor, PeerFailedError, Stage0StepGuard
from pretrain.runtime.signals import EXIT_PREEMPTED, PreemptionHandler
from pretrain.step_record import StepResult, step_record

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed for dropout in optimizer step `step` on `rank`: a hash of (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """`batch` on `device`; asynchronous from pinned memory (TrainLoader pins where CUDA is present)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(engine, loader: ValidationLoader, comm: Collectives) -> dict:
    """Validation MLM loss, perplexity, masked-token accuracy (and pair accuracy) over all ranks; for a
    mixture also each source's loss and accuracies (`eval_loss_by_source`, ...: {name: value})."""
    engine.eval()
    sums = torch.zeros(max(len(loader.part_names), 1), 5, dtype=torch.float64, device=comm.device)
    with torch.no_grad():
        for part, batch in loader.parts():
            out = engine(**to_device(batch, comm.device))
            values = (out.mlm_loss_sum, out.mlm_correct, out.num_masked, out.pair_correct, out.num_pairs)
            sums[part] += torch.stack([v.to(torch.float64) for v in values])
    engine.train()
    per_part = to_host(comm.sum_(sums))
    record = _eval_record([sum(column) for column in zip(*per_part, strict=True)])
    # A single shard set is one unnamed part: its record is the overall one.
    for name, part in zip(loader.part_names, per_part if loader.part_names else [], strict=True):
        for key, value in _eval_record(part).items():
            record.setdefault(f"{key}_by_source", {})[name] = value
    return record


def _eval_record(sums) -> dict:
    """eval_loss, eval_perplexity, eval_accuracy (and eval_pair_accuracy) of summed [MLM loss, correct,
    masked, pairs correct, pairs]."""
    loss_sum, correct, masked, pair_correct, pairs = sums
    loss = loss_sum / max(masked, 1.0)
    record = {
        "eval_loss": loss,
        "eval_perplexity": float(np.exp(min(loss, 50.0))),
        "eval_accuracy": correct / max(masked, 1.0),
    }
    if pairs:
        record["eval_pair_accuracy"] = pair_correct / pairs
    return record


def train_step(
    engine,
    data: LoaderStep,
    comm: Collectives,
    *,
    guard: Stage0StepGuard | None,
    fault: StepFault | None = None,
) -> StepResult:
    """Forward and backward over this rank's micro-batches of one optimizer step and the update; sends one
    collective (the global counts) and fetches nothing from the device. `fault` (debug.*, None on
    every step without one) is applied to the first micro-batch's loss."""
    batches = [to_device(b, comm.device) for b in data.micro_batches]
    set_engine_batch(engine, len(data.rank_indices) // len(batches), len(batches), comm.world_size)
    counts = comm.sum_(data.counts.to(comm.device, non_blocking=True))
    mlm_factor = (comm.world_size / counts[1].clamp(min=1.0)).float()
    pair_factor = (comm.world_size / counts[2].clamp(min=1.0)).float()
    lr = float(engine.get_lr()[0])  # the rate this step's update uses
    scale = loss_scale(engine) if engine.fp16_enabled() else None
    skipped_before = engine.skipped_steps
    sums = torch.zeros(3, dtype=torch.float64, device=comm.device)
    computed_norm = None
    for i, b in enumerate(batches):
        engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
        out = engine(**b)
        mlm_loss_sum = out.mlm_loss_sum
        loss = mlm_loss_sum * mlm_factor
        if "pair_labels" in b:
            loss = loss + out.pair_loss_sum * pair_factor
        if fault is not None and i == 0:
            mlm_loss_sum, loss = fault.apply(mlm_loss_sum, loss)
        engine.backward(loss, scale_wrt_gas=False)
        if guard is not None and i == len(batches) - 1:  # before the boundary's update
            computed_norm = guard.check(engine.module)
        engine.step()
        stats = (mlm_loss_sum.detach(), out.pair_loss_sum.detach(), out.mlm_correct)
        sums += torch.stack([v.to(torch.float64) for v in stats])
    norm = engine.get_global_grad_norm()
    return StepResult(
        sums,
        counts,
        NonFiniteMonitor.is_bad(sums[0] + sums[1]),
        computed_norm if norm is None else norm,
        lr,
        scale,
        engine.skipped_steps > skipped_before,
    )


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


def _first_data(run: Run) -> LoaderStep | None:
    """The first step's data, agreed like every later step's (None when no step is left to train)."""
    if run.step >= run.cfg.train.max_steps:
        return None
    data, error = _next_data(run.loader)
    first = run.agreement.agree(torch.zeros(0, device=run.comm.device), {"error": error is not None})
    _stop_if_a_rank_failed(error, first.ranks("error"), run.step)
    return data


def _agree_end_of_step(run: Run, result: StepResult, flags: dict) -> tuple[Agreement, float | None]:
    """The one host sync of the step: this rank's sums and `flags` (plus the step's own: a bad loss,
    the fp16 scale floor) agreed with every rank's in one all-reduce; returns the agreement and the
    step's gradient norm on the host."""
    norm = result.grad_norm
    norm_on_device = isinstance(norm, torch.Tensor)
    fetch = [result.counts]
    if norm_on_device:
        fetch.append(norm.detach().to(run.comm.device, torch.float64).reshape(1))
    at_floor = result.loss_scale is not None and result.loss_scale <= run.cfg.fp16.min_loss_scale
    flags = {**flags, "nonfinite": result.bad_loss, "scale_floor": result.skipped and at_floor}
    agreed = run.agreement.agree(result.sums, flags, fetch=torch.cat(fetch))
    return agreed, agreed.fetched[3] if norm_on_device else (None if norm is None else float(norm))


def _check_health(run: Run, agreed: Agreement) -> None:
    """Apply the non-finite policy and the fp16 floor to the agreed step (the same on every rank).

    The monitor names the bad rank(s) (a bad step's update was already dropped: DeepSpeed,
    Stage0StepGuard) and raises NonFiniteLossError past health.max_nonfinite_skips, before any save.
    Raises LossScaleFloorError when an fp16 step overflowed at fp16.min_loss_scale.
    """
    run.monitor.update(agreed.ranks("nonfinite"), run.step)
    if agreed.any("scale_floor"):
        raise LossScaleFloorError(
            f"fp16 step {run.step} overflowed with the loss scale at its floor "
            f"(fp16.min_loss_scale={run.cfg.fp16.min_loss_scale}); {run.engine.skipped_steps} step(s) "
            "skipped so far; stopping. The last good checkpoint is kept: lower optim.lr, raise "
            "optim.warmup_steps or use bf16 before resuming"
        )


def _log_eval(run: Run) -> int:
    """Evaluate at the current step and log it; returns the step."""
    run.metrics.log_eval({"step": run.step, **evaluate(run.engine, run.val_loader, run.comm)})
    return run.step


def _eval_due(cfg: Config, step: int) -> bool:
    """Whether `step` is an eval step (a checkpoint at max_steps or at an eval step was saved after that
    step's evaluation, so a run resumed there has it too)."""
    return (
        step == 0
        or step >= cfg.train.max_steps
        or bool(cfg.eval.every_steps and step % cfg.eval.every_steps == 0)
    )


def _one_step(run: Run, data: LoaderStep, preemption: PreemptionHandler, started: float):
    """Train the step of `data`, prefetch the next step's data and agree the end of the step.

    Returns (agreement, metrics record, next step's data, this rank's data error or None). Raises what
    `_check_health` raises.
    """
    t, debug = run.cfg.train, run.cfg.debug
    step_start = time.perf_counter()
    torch.manual_seed(step_seed(t.seed, run.step, run.info.rank))  # dropout: nothing to checkpoint
    result = train_step(run.engine, data, run.comm, guard=run.guard, fault=run.faults.at(run.step + 1))
    run.step, run.loader_state = run.step + 1, data.state_after
    samples = run.comm.gather_indices(data.rank_indices) if debug.log_sample_indices else None
    upcoming, error = _next_data(run.loader) if run.step < t.max_steps else (None, None)
    flags = {
        "preempt": preemption.requested,
        "save": run.checkpoints.should_save(run.step),
        "out_of_time": t.max_minutes is not None and time.monotonic() - started >= t.max_minutes * 60,
        "error": error is not None,
    }
    agreed, norm = _agree_end_of_step(run, result, flags)
    _check_health(run, agreed)
    record = step_record(run, result, agreed, norm, time.perf_counter() - step_start, data, samples)
    return agreed, record, upcoming, error


def train(cfg: Config, info: DistInfo, *, on_gpu: bool) -> int:
    """Train `cfg` on this rank; returns the exit code (0 done, EXIT_PREEMPTED after a signal-save).

    Raises ConfigError / DataError / CheckpointError for bad input (before the first step; a run_dir
    another run holds included), NonFiniteLossError when losses stay NaN/Inf longer than the policy
    allows, LossScaleFloorError when an fp16 step overflows at fp16.min_loss_scale, PeerFailedError when
    another rank's data failed. The run dir's lock (rank 0) is given back at the end, and on any error.
    """
    run = build_run(cfg, info, on_gpu=on_gpu)
    try:
        return _train(run)
    finally:
        run.release()


def _train(run: Run) -> int:
    """The loop of `train` over the built `run`."""
    if run.step == 0:
        _log_eval(run)
    started, last_eval = time.monotonic(), run.step if _eval_due(run.cfg, run.step) else None
    issued = run.comm.issued
    with PreemptionHandler() as preemption:
        try:
            exit_code = _loop(run, preemption, started, last_eval, issued)
        finally:
            run.loader.close()  # the loader of the phase trained last
    run.metrics.close()
    if run.info.is_main:
        log.info("finished at step %d (%d tokens); run dir %s", run.step, run.tokens, run.cfg.run_dir)
    return exit_code


def _loop(run: Run, preemption: PreemptionHandler, started: float, last_eval, issued: int) -> int:
    """The steps of `_train` until the budget, a preemption or the time limit ends them; returns the exit
    code. A phase boundary is crossed after the step that reaches it has been evaluated and saved (both
    belong to the phase that trained it)."""
    cfg, t, exit_code = run.cfg, run.cfg.train, 0
    data = _first_data(run)
    while run.step < t.max_steps and (t.max_tokens is None or run.tokens < t.max_tokens):
        agreed, record, data, data_error = _one_step(run, data, preemption, started)
        if cfg.debug.log_collectives:  # since the previous record: includes that step's eval and save
            record["collectives"], issued = run.comm.issued - issued, run.comm.issued
        run.metrics.log_step(record)
        next_phase = run.phases.due(run.phase, run.step, run.tokens) if run.step < t.max_steps else run.phase
        if next_phase == run.phase:  # at a boundary the old loader's prefetched step (or error) is dropped
            _stop_if_a_rank_failed(data_error, agreed.ranks("error"), run.step)  # this step trained fine
        if cfg.eval.every_steps and run.step % cfg.eval.every_steps == 0:
            last_eval = _log_eval(run)
        preempted = preemption.agreed(agreed.any("preempt"))
        requested = preempted or agreed.any("save")
        run.checkpoints.save_if_due(run.engine, run.trainer_state, run.step, requested=requested)
        if preempted:
            exit_code = EXIT_PREEMPTED
            break
        if agreed.any("out_of_time"):
            log.info("train.max_minutes=%s reached at step %d; stopping", t.max_minutes, run.step)
            break
        if next_phase != run.phase:
            enter_phase(run, next_phase)
            data = _first_data(run)
    if exit_code == 0:
        if last_eval != run.step:
            _log_eval(run)
        run.checkpoints.save_if_due(run.engine, run.trainer_state, run.step, last=True)
    return exit_code
