"""The training loop, top to bottom: data -> model -> engine -> resume -> steps (eval, checkpoint) -> end.

Loss normalisation: a step's MLM loss is the summed cross-entropy over every masked token of every
micro-batch on every rank, divided by that global masked-token count (all-reduced before the first
forward). DeepSpeed averages gradients over ranks, so each micro-batch back-propagates
`mlm_loss_sum * world / global_count` with DeepSpeed's own 1/grad_accum scaling turned off
(`scale_wrt_gas=False`). The NSP/SOP loss is normalised the same way by the global pair count.

Determinism: model init is seeded by train.seed, sample order and masks are pure functions of
(seed, epoch, index) (pretrain/data.py, pretrain/masking.py), and dropout is reseeded at every step from
(seed, step, rank), so the same config gives the same per-step losses bit for bit on CPU and a resumed
run needs no RNG state to continue exactly.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from pretrain.checkpoint import CheckpointManager
from pretrain.config import Config, config_hash, save_config
from pretrain.data import GlobalBatchSampler, TrainLoader, ValidationLoader, resolve_seq_len
from pretrain.distributed import DistInfo
from pretrain.engine import initialize_engine
from pretrain.health import NonFiniteMonitor, Stage0StepGuard
from pretrain.masking import MaskingCollator
from pretrain.metrics import MetricsLogger, memory_stats, mfu
from pretrain.model import build_model
from pretrain.run_identity import describe_run
from pretrain.signals import EXIT_PREEMPTED, PreemptionHandler

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed for dropout in optimizer step `step` on `rank`: a hash of (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def all_reduce_sum(values: list[float | torch.Tensor]) -> list[float]:
    """Sum a few numbers over all ranks in one float64 all-reduce (a no-op in a world of one)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


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


def evaluate(engine, loader: ValidationLoader, device: str) -> dict:
    """Validation MLM loss, perplexity, masked-token accuracy (and pair accuracy) over all ranks."""
    engine.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            out = engine(**{k: v.to(device) for k, v in batch.items()})
            sums += torch.tensor(
                [float(out.mlm_loss_sum), float(out.mlm_correct), float(out.num_masked),
                 float(out.pair_correct), float(out.num_pairs)], dtype=torch.float64,
            )  # fmt: skip
    engine.train()
    loss_sum, correct, masked, pair_correct, pairs = all_reduce_sum(sums.tolist())
    loss = loss_sum / max(masked, 1.0)
    record = {"eval_loss": loss, "eval_perplexity": float(np.exp(min(loss, 50.0))),
              "eval_accuracy": correct / max(masked, 1.0)}  # fmt: skip
    if pairs:
        record["eval_pair_accuracy"] = pair_correct / pairs
    return record


def _grad_norm(engine, computed: float | None) -> float | None:
    norm = engine.get_global_grad_norm()
    return computed if norm is None else float(norm)


def gather_sample_indices(rank_indices: np.ndarray) -> list[int]:
    """The step's global sample indices of every rank, in rank order (a collective; debug only)."""
    local = torch.from_numpy(np.ascontiguousarray(rank_indices, dtype=np.int64))
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local.tolist()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).tolist()


def train(cfg: Config, info: DistInfo, *, on_gpu: bool) -> int:
    """Train `cfg` on this rank; returns the exit code (0 done, EXIT_PREEMPTED after a signal-save).

    Raises ConfigError / DataError / CheckpointError for bad input (before the first step) and
    NonFiniteLossError when losses stay NaN/Inf longer than the policy allows.
    """
    rank, world, device = info.rank, info.world_size, info.device
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
    engine = initialize_engine(cfg, model.to(device), world, on_gpu=on_gpu)

    collator = MaskingCollator(
        cfg.masking, special_ids=special_ids, vocab_size=vocab_size, seed=cfg.train.seed, seq_len=seq_len
    )
    t = cfg.train
    global_batch = t.micro_batch_size * t.grad_accum_steps * world
    sampler = GlobalBatchSampler(
        len(train_reader), global_batch_size=global_batch, micro_batch_size=t.micro_batch_size,
        seed=t.seed, rank=rank, world_size=world,
    )  # fmt: skip
    loader = TrainLoader(train_reader, sampler, collator, cfg.data.prefetch_batches)
    val_loader = ValidationLoader(val_reader, collator, t.micro_batch_size, rank, world, cfg.eval.max_batches)
    checkpoints = CheckpointManager(
        cfg.run_dir, cfg.checkpoint, rank=rank, world_size=world, config_hash=config_hash(cfg),
        run=describe_run(cfg, model, train_reader.manifest, seq_len=seq_len),
    )  # fmt: skip
    monitor = NonFiniteMonitor(cfg.health.max_nonfinite_skips, rank=rank, world_size=world)
    debug = cfg.debug
    nan_steps = set(debug.nonfinite_loss_steps) if rank == debug.nonfinite_loss_rank else set()

    state = checkpoints.resume(engine, t.resume) or {}
    step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
    if state:
        loader.load_state_dict(state["loader"])
        monitor.load_state_dict(state["nonfinite"])
    if info.is_main:
        os.makedirs(cfg.run_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.run_dir, "config.yaml"))
    metrics = MetricsLogger(
        cfg.run_dir, is_main=info.is_main, max_steps=t.max_steps, log_every_steps=t.log_every_steps,
        tensorboard=cfg.metrics.tensorboard, start_step=step,
    )  # fmt: skip
    if step == 0:
        metrics.log_eval({"step": 0, **evaluate(engine, val_loader, device)})

    def trainer_state() -> dict:
        return {"step": step, "tokens": tokens, "consumed_samples": loader.state_dict()["consumed_samples"],
                "loader": loader.state_dict(), "nonfinite": monitor.state_dict()}  # fmt: skip

    started = time.monotonic()
    # A checkpoint at max_steps or at an eval step was saved after that step's evaluation.
    evaluated = (
        step == 0 or step >= t.max_steps or bool(cfg.eval.every_steps and step % cfg.eval.every_steps == 0)
    )
    exit_code, last_eval_step = 0, step if evaluated else None
    # ZeRO-0 fp32 is DeepSpeed's one path without a norm or an overflow check: we supply both.
    stage0_fp32 = cfg.zero.stage == 0 and cfg.precision == "fp32"
    stage0_guard = Stage0StepGuard(engine.optimizer) if stage0_fp32 else None
    with loader, PreemptionHandler() as preemption:
        while step < t.max_steps and (t.max_tokens is None or tokens < t.max_tokens):
            step_start = time.perf_counter()
            torch.manual_seed(step_seed(t.seed, step, rank))  # dropout: derivable, nothing to checkpoint
            data = next(loader)
            batches = [{k: v.to(device) for k, v in b.items()} for b in data.micro_batches]
            local_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            local_masked = sum(b["masked_labels"].numel() for b in batches)
            local_pairs = sum(b["pair_labels"].numel() for b in batches if "pair_labels" in b)
            step_tokens, g_masked, g_pairs = all_reduce_sum([local_tokens, local_masked, local_pairs])

            lr = float(engine.get_lr()[0])  # the rate this step's update uses
            sums = torch.zeros(3, dtype=torch.float64)
            computed_norm = None
            for i, b in enumerate(batches):
                out = engine(**b)
                mlm_loss_sum = out.mlm_loss_sum
                if i == 0 and step + 1 in nan_steps:  # fault injection (debug.nonfinite_loss_steps)
                    mlm_loss_sum = mlm_loss_sum * float("nan")
                loss = mlm_loss_sum * (world / max(g_masked, 1.0))
                if g_pairs:
                    loss = loss + out.pair_loss_sum * (world / g_pairs)
                engine.backward(loss, scale_wrt_gas=False)
                if stage0_guard is not None and i == len(batches) - 1:  # before the boundary's update
                    computed_norm = stage0_guard.check(engine.module)
                engine.step()
                stats = [mlm_loss_sum.item(), out.pair_loss_sum.item(), out.mlm_correct.item()]
                sums += torch.tensor(stats, dtype=torch.float64)
            step += 1
            tokens += int(step_tokens)
            # Collective: names the bad rank(s); a bad step's update was already dropped (see
            # Stage0StepGuard); raises NonFiniteLossError past health.max_nonfinite_skips, before any save.
            monitor.check(float(sums[0] + sums[1]), step)
            mlm_sum, pair_sum, correct = all_reduce_sum(sums.tolist())
            mlm_loss = mlm_sum / max(g_masked, 1.0)
            pair_loss = pair_sum / g_pairs if g_pairs else 0.0
            elapsed = time.perf_counter() - step_start
            record = {
                "step": step, "loss": mlm_loss + pair_loss, "mlm_loss": mlm_loss,
                "mlm_accuracy": correct / max(g_masked, 1.0), "lr": lr,
                "grad_norm": _grad_norm(engine, computed_norm), "tokens_per_s": step_tokens / elapsed,
                "samples_per_s": global_batch / elapsed, "tokens": tokens,
                "skipped_steps": int(engine.skipped_steps), "nonfinite_skipped": monitor.total_skipped,
                **memory_stats(device),
            }  # fmt: skip
            if debug.log_sample_indices:
                record["epoch"] = data.epoch
                record["samples"] = gather_sample_indices(data.rank_indices)
            if g_pairs:
                record["pair_loss"] = pair_loss
            if cfg.precision == "fp16":
                record["loss_scale"] = float(engine.optimizer.cur_scale)
            utilisation = mfu(
                record["tokens_per_s"], flops_per_token, world, cfg.metrics.peak_tflops_per_device
            )
            if utilisation is not None:
                record["mfu"] = utilisation
            metrics.log_step(record)

            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
                metrics.log_eval({"step": step, **evaluate(engine, val_loader, device)})
                last_eval_step = step
            out_of_time = t.max_minutes is not None and time.monotonic() - started >= t.max_minutes * 60
            out_of_time = checkpoints.agree(out_of_time)  # ranks' clocks differ; stop together
            if preemption.should_stop():
                checkpoints.save(engine, trainer_state(), step)
                exit_code = EXIT_PREEMPTED
                break
            if checkpoints.agree(checkpoints.should_save(step)):
                checkpoints.save(engine, trainer_state(), step)
            if out_of_time:
                log.info("train.max_minutes=%s reached at step %d; stopping", t.max_minutes, step)
                break

        if exit_code == 0:
            if last_eval_step != step:
                metrics.log_eval({"step": step, **evaluate(engine, val_loader, device)})
            if checkpoints.last_saved_step != step:
                checkpoints.save(engine, trainer_state(), step)
    metrics.close()
    if info.is_main:
        log.info("finished at step %d (%d tokens); run dir %s", step, tokens, cfg.run_dir)
    return exit_code
