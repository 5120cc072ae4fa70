"""What a checkpoint reads from a live DeepSpeed engine, or sets on it, beyond DeepSpeed's save/load.

`weights_are_finite` (no checkpoint of NaN/Inf weights), `master_param_groups` (the names DeepSpeed's
ZeRO-0 16-bit files omit, for export from the fp32 master copies), and `fresh_base_lrs` +
`apply_lr_schedule` (a resumed run follows its own LR schedule from the resumed step on).
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def weights_are_finite(engine) -> bool:
    """True when every weight this rank holds is finite: the module's parameters (under ZeRO-3 this
    rank's partitions) and the optimizer's fp32 master copies (ZeRO partitions or ZeRO-0 16-bit groups).
    One host sync per device."""
    tensors = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
    for attr in (
        "single_partition_of_fp32_groups",  # ZeRO 1-2
        "fp32_partitioned_groups_flat",  # ZeRO-3
        "fp32_groups_flat_partition",  # BF16_Optimizer
        "fp32_groups",  # ZeRO-0 fp16/bf16 (unfused)
        "fp32_groups_flat",  # ZeRO-0 fp16 (fused)
    ):
        for group in getattr(engine.optimizer, attr, None) or []:
            tensors.extend(group if isinstance(group, (list, tuple)) else [group])
    flags: dict[torch.device, list[torch.Tensor]] = {}  # one fetch per device, not one per tensor
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() and t.is_floating_point():
            flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(group).all()) for group in flags.values())


def master_param_groups(engine) -> list[list[str]] | None:
    """Parameter names per optimizer group, for the one layout whose files store its fp32 master copies
    by position only (ZeRO-0 with 16-bit weights: DeepSpeed's FP16 optimizers); None otherwise."""
    groups = getattr(engine.optimizer, "fp16_groups", None)
    if engine.zero_optimization_stage() != 0 or groups is None:
        return None
    return [[engine.param_names[p] for p in group] for group in groups]


def fresh_base_lrs(engine) -> list[float] | None:
    """The LR schedule's peak rates of this run's config, before a checkpoint overwrites them."""
    scheduler = getattr(engine, "lr_scheduler", None)
    return list(scheduler.base_lrs) if getattr(scheduler, "lr_lambdas", None) else None


def apply_lr_schedule(engine, base_lrs: list[float] | None) -> None:
    """After a load: set each param group's LR from this run's LambdaLR schedule at the resumed step.

    LambdaLR does not save its lambdas, and a loaded optimizer carries the rate the old schedule gave
    for the next step: with a raised train.max_steps (or another optim.lr or schedule) the first resumed
    step would run at the old rate, 0 when the old run had finished. `base_lrs` are this run's peak
    rates (taken before loading). Logs the old and new rate when they differ. A no-op for other
    schedulers.
    """
    scheduler = getattr(engine, "lr_scheduler", None)
    if base_lrs is None or not getattr(scheduler, "lr_lambdas", None):
        return
    step = scheduler.last_epoch
    groups = scheduler.optimizer.param_groups
    old = [g["lr"] for g in groups]
    new = [base * factor(step) for base, factor in zip(base_lrs, scheduler.lr_lambdas, strict=True)]
    scheduler.base_lrs = list(base_lrs)
    for group, base, lr in zip(groups, base_lrs, new, strict=True):
        group["initial_lr"], group["lr"] = base, lr
    scheduler._last_lr = list(new)
    if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) for a, b in zip(old, new, strict=True)):
        log.info(
            "learning rate at the resumed update %d: %.6g from the checkpoint's schedule -> %.6g from this "
            "run's (train.max_steps / optim.*)",
            step,
            old[0],
            new[0],
        )
