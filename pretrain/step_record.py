"""One optimizer step's outcome (`StepResult`, what `train_step` returns before the end-of-step
agreement) and its metrics record (`step_record`, one line of metrics.jsonl; keys in docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pretrain.data.loader import LoaderStep
from pretrain.metrics import memory_stats, mfu
from pretrain.runtime.collectives import Agreement


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


def step_record(
    run,
    result: StepResult,
    agreed: Agreement,
    norm: float | None,
    elapsed: float,
    trained: LoaderStep,
    samples,
) -> dict:
    """Count the step's tokens into `run` (pretrain/run_setup.py's Run) and return the step's metrics
    record (metrics.jsonl). `norm`: the gradient norm on the host; `elapsed`: the step's seconds;
    `trained`: the step's data; `samples`: its global sample indices (debug.log_sample_indices) or None."""
    step_tokens, g_masked, g_pairs = agreed.fetched[:3]
    run.tokens += int(step_tokens)
    mlm_sum, pair_sum, correct = agreed.sums
    mlm_loss = mlm_sum / max(g_masked, 1.0)
    pair_loss = pair_sum / g_pairs if g_pairs else 0.0
    record = {
        "step": run.step,
        "loss": mlm_loss + pair_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": correct / max(g_masked, 1.0),
        "lr": result.lr,
        "grad_norm": norm,
        "tokens_per_s": step_tokens / elapsed,
        "samples_per_s": len(trained.global_batch) / elapsed,
        "tokens": run.tokens,
        "masked_tokens": int(g_masked),
        "phase": run.phase,
        "skipped_steps": int(run.engine.skipped_steps),
        "nonfinite_skipped": run.monitor.total_skipped,
        **memory_stats(run.info.device),
    }
    if samples is not None:
        record["epoch"], record["samples"] = trained.epoch, samples
    drawn = trained.state_after.get("source_samples")
    if drawn is not None:  # a mixture: the samples drawn from each source so far, and its passes
        record["source_samples"] = drawn
        record["source_epochs"] = run.loader.reader.source_epochs(drawn)
    if g_pairs:
        record["pair_loss"] = pair_loss
    if result.loss_scale is not None:
        record["loss_scale"] = result.loss_scale
    utilisation = mfu(
        record["tokens_per_s"],
        run.flops_per_token,
        run.info.world_size,
        run.cfg.metrics.peak_tflops_per_device,
    )
    if utilisation is not None:
        record["mfu"] = utilisation
    return record
