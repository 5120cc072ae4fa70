"""Typed config -> DeepSpeed config dict, optimizer, LR schedule; then `deepspeed.initialize`.

The generated dict is the one source of truth for batch size, accumulation, precision and ZeRO stage.
The user's extra `deepspeed:` keys are merged in; a key that contradicts a generated value is refused.
Checkpoints are saved by `CheckpointManager` with `save_latest=False`; DeepSpeed's own `latest` file is
never written or read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pretrain.config import Config, ConfigError
from pretrain.config.files import deep_merge
from pretrain.runtime.distributed import cpu_fp16_test_device
from pretrain.runtime.lr_schedule import lr_factor

# Large enough that DeepSpeed never prints its own per-step lines; our metrics logger does that.
_STEPS_PER_PRINT = 1 << 30
# ZeRO-1/2 gradient buckets on GPU, in elements (DeepSpeed's default is 5e8, larger than BERT-base and
# -large, so reduction could only start after the last gradient; 5e7 bf16 elements = 100 MB per bucket,
# past the size where NCCL reaches its bus bandwidth, and small enough to overlap with the backward).
GPU_BUCKET_ELEMENTS = 50_000_000
# From this many micro-batches per step, bf16 gradients are accumulated in fp32 under ZeRO-2/3 (a bf16
# sum of 8+ terms loses the small ones: bf16 keeps 8 significant bits).
FP32_GRAD_ACCUM_FROM_STEPS = 8


def deepspeed_config(cfg: Config, world_size: int, *, on_gpu: bool) -> dict:
    """The DeepSpeed config dict for `cfg` on `world_size` ranks (user `deepspeed:` keys merged in).

    Raises ConfigError on inconsistent batch arithmetic, fp16 or LAMB without a GPU (fp16 is allowed on
    the CPU fp16 test device, pretrain/runtime/distributed.py), LAMB under ZeRO >= 1, and a user key that
    contradicts a generated one (naming the key and both values).
    """
    global_batch = cfg.train.global_batch(world_size)
    if cfg.precision == "fp16" and not (on_gpu or cpu_fp16_test_device()):
        raise ConfigError(
            "precision=fp16 needs a GPU (DeepSpeed's CPU accelerator has no fp16); use precision=bf16 or fp32"
        )
    if cfg.optim.name == "lamb" and cfg.zero.stage >= 1:
        # DeepSpeed's own refusal of FusedLamb under ZeRO is what `zero_allow_untested_optimizer` switches
        # off; we never set that key, and say why here instead of failing inside deepspeed.initialize.
        raise ConfigError(
            f"optim.name=lamb with zero.stage={cfg.zero.stage}: LAMB's per-layer trust ratio would be "
            "computed on ZeRO's flattened partitions, not on layers; use zero.stage=0 with lamb, or "
            "optim.name=adamw"
        )
    if cfg.optim.name == "lamb" and not on_gpu:
        raise ConfigError(
            "optim.name=lamb needs a GPU (DeepSpeed's FusedLamb is a CUDA kernel); use adamw on CPU"
        )
    zero: dict = {"stage": cfg.zero.stage}
    if cfg.zero.offload_optimizer:
        if cfg.zero.stage == 0:
            raise ConfigError(
                "zero.offload_optimizer needs zero.stage >= 1 (ZeRO-Offload partitions the optimizer)"
            )
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    generated: dict = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "steps_per_print": _STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "fp16":
        # loss_scale 0 = dynamic: an overflowing step is skipped and the scale halves (after `hysteresis`
        # overflows under ZeRO 1-3), it doubles after `loss_scale_window` clean steps; the floor stops the
        # run (trainer.py).
        f = cfg.fp16
        generated["fp16"].update(
            {
                "loss_scale": 0,
                "initial_scale_power": f.initial_scale_power,
                "loss_scale_window": f.loss_scale_window,
                "hysteresis": f.hysteresis,
                "min_loss_scale": f.min_loss_scale,
            }
        )
    optimizer = _deepspeed_optimizer_section(cfg, on_gpu)
    if optimizer is not None:
        # DeepSpeed builds these (CPUAdam under offload: a ZeRO-tested optimizer; LAMB: ZeRO-0 only).
        generated["optimizer"] = optimizer
    return merge_user_keys(generated, deep_merge(tuning_defaults(cfg, on_gpu=on_gpu), cfg.deepspeed))


def tuning_defaults(cfg: Config, *, on_gpu: bool) -> dict:
    """DeepSpeed keys we set for speed that a user may override under `deepspeed:` (unlike the generated
    keys, which a user key may only repeat).

    Everywhere: DeepSpeed's throughput timer off (it calls the accelerator's synchronize() at the start and
    the end of every micro-batch, deepspeed/utils/timer.py; our metrics logger measures throughput). On GPU
    under ZeRO-1/2: `overlap_comm` (gradient reduction overlaps the backward; double buffers, about
    2 x bucket x 2 bytes more memory) with GPU_BUCKET_ELEMENTS buckets; under bf16 and ZeRO-2/3 with
    at least FP32_GRAD_ACCUM_FROM_STEPS micro-batches, `data_types.grad_accum_dtype: fp32` (ZeRO-0 has no
    such mode and ZeRO-1 would switch to another optimizer, BF16_Optimizer, with another checkpoint
    layout, so those are left alone). Nothing here changes CPU numerics.
    """
    defaults: dict = {"timers": {"throughput": {"enabled": False}}}
    if not on_gpu:
        return defaults
    if cfg.zero.stage in (1, 2):
        defaults["zero_optimization"] = {
            "overlap_comm": True,
            "reduce_bucket_size": GPU_BUCKET_ELEMENTS,
            "allgather_bucket_size": GPU_BUCKET_ELEMENTS,
        }
    if (
        cfg.precision == "bf16"
        and cfg.zero.stage in (2, 3)
        and cfg.train.grad_accum_steps >= FP32_GRAD_ACCUM_FROM_STEPS
    ):
        defaults["data_types"] = {"grad_accum_dtype": "fp32"}
    return defaults


def _deepspeed_optimizer_section(cfg: Config, on_gpu: bool) -> dict | None:
    """The `optimizer` section when DeepSpeed builds the optimizer (LAMB, or AdamW under ZeRO-Offload)."""
    o = cfg.optim
    params = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    if o.name == "lamb":
        return {"type": "Lamb", "params": params}
    if cfg.zero.offload_optimizer:
        return {"type": "AdamW", "params": params}  # DeepSpeed picks DeepSpeedCPUAdam for offloaded state
    return None


def merge_user_keys(generated: dict, user: dict, prefix: str = "deepspeed.") -> dict:
    """`generated` with the user's extra keys added; raises ConfigError where a user value differs."""
    merged = dict(generated)
    for key, value in user.items():
        if key not in generated:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(generated[key], dict):
            merged[key] = merge_user_keys(generated[key], value, f"{prefix}{key}.")
        elif value != generated[key]:
            raise ConfigError(
                f"{prefix}{key}={value!r} contradicts the value {generated[key]!r} generated from the typed "
                f"config; remove it from `deepspeed:` and set the typed key instead (see docs/training.md)"
            )
    return merged


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices, none on biases and LayerNorm weights (as in BERT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scheduler_factory(schedule: Callable[[int], float]) -> Callable:
    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    return make


def initialize_engine(
    cfg: Config,
    model: torch.nn.Module,
    world_size: int,
    *,
    on_gpu: bool,
    schedule: Callable[[int], float] | None = None,
):
    """Wrap `model` in a DeepSpeed engine for `cfg`; returns the engine (optimizer and scheduler inside).

    AdamW is torch's (fused kernel on GPU, foreach on CPU) unless ZeRO-Offload asks for DeepSpeed's
    CPUAdam; LAMB is DeepSpeed's. The LR schedule is a LambdaLR over `schedule` (step -> multiplier of
    optim.lr; default: `lr_factor` of cfg.optim over train.max_steps; a run with phases passes its
    phased_schedule, pretrain/runtime/lr_schedule.py). Raises ConfigError for an invalid combination
    (see `deepspeed_config`).
    """
    if schedule is None:
        o, steps = cfg.optim, cfg.train.max_steps
        schedule = lambda s: lr_factor(s, o, steps)  # noqa: E731
    import deepspeed

    ds_config = deepspeed_config(cfg, world_size, on_gpu=on_gpu)
    groups = parameter_groups(model, cfg.optim.weight_decay)
    optimizer = None
    if "optimizer" not in ds_config:
        o = cfg.optim
        optimizer = torch.optim.AdamW(
            groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=on_gpu or None, foreach=None if on_gpu else True
        )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer,
        lr_scheduler=_scheduler_factory(schedule),
        config=ds_config,
    )
    scaler = getattr(engine.optimizer, "loss_scaler", None)  # ZeRO 1-3 under fp16
    if cfg.precision == "fp16" and hasattr(scaler, "raise_error_at_min_scale"):
        # At the floor DeepSpeed's ZeRO scaler raises a bare Exception mid-step (and ZeRO-0's optimizer
        # skips forever); the trainer stops every stage there itself, with one clear line.
        scaler.raise_error_at_min_scale = False
    return engine


def set_engine_batch(engine, micro_batch_size: int, accum_steps: int, world_size: int) -> None:
    """Make the engine's micro-batch and accumulation steps the coming step's (a phase or the batch
    warmup changes them; DeepSpeed's own setters). The trainer marks each accumulation boundary itself,
    so a change of accumulation never misplaces one."""
    if engine.train_micro_batch_size_per_gpu() != micro_batch_size:
        engine.set_train_micro_batch_size(micro_batch_size)
    if engine.gradient_accumulation_steps() != accum_steps:
        engine.set_train_batch_size(micro_batch_size * accum_steps * world_size)
        if hasattr(engine.optimizer, "gradient_accumulation_steps"):
            # ZeRO-1/2 keeps its own copy from the start: under offload it picks where the accumulated
            # gradients (and so the norm) are read from by it
            engine.optimizer.gradient_accumulation_steps = accum_steps


def loss_scale(engine) -> float:
    """The fp16 loss scale the next backward uses (`loss_scale` on every stage's fp16 optimizer; ZeRO-0's
    FP16_UnfusedOptimizer has no `cur_scale`)."""
    return float(engine.optimizer.loss_scale)
