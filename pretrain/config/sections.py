"""The trainer's own config sections, one dataclass each (the `model` section is each architecture's own:
pretrain/models/<arch>/config.py). A docstring under each field documents it; docs/configuration.md is
generated from them (pretrain/config/reference.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from pretrain.errors import ConfigError, require

# What train.resume_allow_changed may name (each is a part of a checkpoint's identity:
# pretrain/checkpoint/identity.py).
RESUME_ALLOWABLE_CHANGES = ("model", "tokenizer", "data", "weights", "seq_len", "seed", "phases")


# A source's name is a key of metrics.jsonl records and a part of TensorBoard tags: keep it plain.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class SourceConfig:
    """One shard set of a mixture (an item of `data.sources`)."""

    path: str = ""
    """Shards directory written by `mlm-data build` (holds manifest.json). Required."""
    weight: float | None = None
    """Relative sampling weight (normalised over the sources); None on every source = weights from the
    sources' sizes and `data.temperature`."""
    name: str | None = None
    """The source's name in `source_samples`, evaluation records and messages (letters, digits, `_.-`);
    None = the shards directory's name."""

    def __post_init__(self) -> None:
        require(bool(self.path), "data.sources: every source needs a path (a shards directory)")
        require(
            self.weight is None or self.weight > 0,
            f"data.sources: the weight of {self.path} must be > 0, got {self.weight}",
        )
        if self.name is None:
            self.name = os.path.basename(os.path.normpath(self.path))
        require(
            _SOURCE_NAME.fullmatch(self.name) is not None,
            f"data.sources: source name {self.name!r} (of {self.path}) must be 1-64 letters, digits or "
            "'_.-' starting with a letter or digit; set its name:",
        )


@dataclass
class DataConfig:
    """Where the training shards are and how they are read: one shard set (`path`) or a weighted mixture
    of several (`sources`).

    A mixture draws each global sample from one source: the sources take turns in a fixed interleaving
    whose shares are the weights (every global batch holds each source's share to within a sample or
    two), and each source serves its rows in its own shuffled order, starting a new shuffled pass (an
    epoch of that source) when it runs out, so a small source repeats instead of running dry. Which row
    of which source fills each sample is a pure function of (train.seed, epoch, sample index) and the
    weights: resume is exact on any world size. All sources must share one tokenizer (by fingerprint), one
    row length and the same sentence-pair layout.
    """

    path: str | None = None
    """Shards directory written by `mlm-data build` (holds manifest.json). This or `sources` is required;
    a config whose base sets it and that trains a mixture clears it with `path: null`."""
    sources: list[SourceConfig] = field(default_factory=list)
    """A mixture: a list of `{path, weight, name}` (see the `data.sources[]` keys below). Exclusive with
    `path`."""
    temperature: float = 1.0
    """Weights from sizes when no source has a weight: p ~ n^(1/temperature), n = the source's training
    rows (1: in proportion to size; larger: flatter, towards uniform)."""
    seq_len: int | None = None
    """Sequence length to train on; None = the shards' seq_len. Must not exceed the shards' seq_len."""
    prefetch_batches: int = 2
    """Optimizer steps' worth of batches the background thread prepares ahead of the loop."""

    def __post_init__(self) -> None:
        require(self.seq_len is None or self.seq_len > 0, f"data.seq_len must be > 0, got {self.seq_len}")
        require(
            self.prefetch_batches >= 1, f"data.prefetch_batches must be >= 1, got {self.prefetch_batches}"
        )
        require(self.temperature > 0, f"data.temperature must be > 0, got {self.temperature}")
        if not self.sources:
            return
        require(
            not self.path,
            f"data.path ({self.path}) and data.sources are exclusive; set data.path: null beside "
            "data.sources (a base config's data.path included)",
        )
        weighted = [s.weight is not None for s in self.sources]
        require(
            all(weighted) or not any(weighted),
            "data.sources: give every source a weight, or none (weights from sizes and data.temperature)",
        )
        require(
            self.temperature == 1.0 or not any(weighted),
            f"data.temperature={self.temperature} only applies to weights from sizes; the sources have "
            "weights: drop one or the other",
        )
        seen: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            require(
                source.name not in seen,
                f"data.sources[{seen.get(source.name)}] and data.sources[{i}] are both named "
                f"{source.name!r}; give each source its own name",
            )
            seen[source.name] = i

    @property
    def is_mixture(self) -> bool:
        """Whether this section trains a mixture (`sources`) rather than one shard set (`path`)."""
        return bool(self.sources)


@dataclass
class MaskingConfig:
    """Which tokens the MLM objective hides and how."""

    probability: float = 0.15
    """Fraction of (non-special, non-pad) tokens selected for prediction."""
    mask_token_ratio: float = 0.8
    """Of the selected tokens, the fraction replaced by [MASK]."""
    random_token_ratio: float = 0.1
    """Of the selected tokens, the fraction replaced by a random non-special token (the rest stay)."""
    whole_word: bool = False
    """Select whole words (by the shards' word_start flags): a word is masked entirely or not at all."""
    span: bool = False
    """Select spans of whole words with geometric lengths (SpanBERT); implies whole-word units."""
    span_mean_length: float = 3.0
    """Mean span length in words before clipping (geometric distribution, p = 1 / mean)."""
    span_max_length: int = 10
    """Longest span in words."""

    def __post_init__(self) -> None:
        require(
            0.0 < self.probability < 1.0, f"masking.probability must be in (0, 1), got {self.probability}"
        )
        require(
            self.mask_token_ratio >= 0 and self.random_token_ratio >= 0,
            "masking.mask_token_ratio and masking.random_token_ratio must be >= 0",
        )
        require(
            self.mask_token_ratio + self.random_token_ratio <= 1.0 + 1e-9,
            f"masking.mask_token_ratio + masking.random_token_ratio must be <= 1, got "
            f"{self.mask_token_ratio} + {self.random_token_ratio}",
        )
        require(
            self.span_mean_length >= 1.0,
            f"masking.span_mean_length must be >= 1, got {self.span_mean_length}",
        )
        require(
            self.span_max_length >= 1, f"masking.span_max_length must be >= 1, got {self.span_max_length}"
        )


@dataclass
class TrainConfig:
    """Batch sizes, budgets, seed and resumption."""

    max_steps: int = 1000
    """Optimizer steps to train for."""
    micro_batch_size: int = 32
    """Sequences per rank per forward/backward pass."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch_size: int | None = None
    """If set, must equal micro_batch_size x grad_accum_steps x world size (checked at start)."""
    seed: int = 0
    """Seeds model init, sample order and masks."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in run_dir if any; none: start fresh; or a path."""
    resume_allow_changed: list = field(default_factory=list)
    """What a resume may find changed since the checkpoint (refused otherwise, naming the change): any of
    model (shape), tokenizer, data (build identity), weights (a mixture's sources and weights), seq_len,
    seed, phases (a phase that had started at the checkpoint). E.g. `[data]` to continue on a new build of
    the corpus on purpose."""
    max_tokens: int | None = None
    """Stop once this many (non-pad) training tokens have been consumed."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this many minutes of training."""
    log_every_steps: int = 10
    """Progress log line / TensorBoard interval in optimizer steps (metrics.jsonl gets every step)."""
    batch_warmup_steps: int = 0
    """Batch-size warmup: over this many first steps the global batch grows linearly from
    batch_warmup_start to the configured one, in whole micro-batches per rank (more accumulation steps,
    the micro-batch stays). 0: off."""
    batch_warmup_start: int | None = None
    """The global batch of step 1 under batch_warmup_steps; a multiple of micro_batch_size x world size."""
    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, attention
    kernels that honour it): bit-identical losses on GPU too, at some speed. CPU runs are bit-identical
    without it."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "grad_accum_steps", "log_every_steps"):
            require(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        require(
            self.global_batch_size is None or self.global_batch_size >= 1,
            f"train.global_batch_size must be >= 1, got {self.global_batch_size}",
        )
        require(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        require(bool(self.resume), "train.resume must be 'auto', 'none' or a checkpoint path")
        require(
            all(name in RESUME_ALLOWABLE_CHANGES for name in self.resume_allow_changed),
            f"train.resume_allow_changed must list names from {', '.join(RESUME_ALLOWABLE_CHANGES)}, "
            f"got {self.resume_allow_changed!r}",
        )
        require(self.max_tokens is None or self.max_tokens > 0, "train.max_tokens must be > 0")
        require(self.batch_warmup_steps >= 0, "train.batch_warmup_steps must be >= 0")
        require(
            (self.batch_warmup_steps > 0) == (self.batch_warmup_start is not None),
            "train.batch_warmup_steps and train.batch_warmup_start go together: set both or neither",
        )
        require(
            self.batch_warmup_start is None or self.batch_warmup_start >= 1,
            "train.batch_warmup_start must be >= 1",
        )
        require(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes must be > 0")

    def global_batch_at(self, step: int, world_size: int) -> int:
        """The global batch of the update after `step` completed updates: `global_batch(world_size)`, or
        under batch warmup the linear ramp from batch_warmup_start rounded down to whole micro-batches per
        rank. Raises ConfigError when batch_warmup_start is not a multiple of micro x world size or is
        larger than the configured batch."""
        full = self.global_batch(world_size)
        if step >= self.batch_warmup_steps:
            return full
        per_micro = self.micro_batch_size * world_size
        start = self.batch_warmup_start
        if start % per_micro or start > full:
            raise ConfigError(
                f"train.batch_warmup_start={start} must be a multiple of train.micro_batch_size x world "
                f"size ({per_micro}) and at most the global batch ({full})"
            )
        ramp = start + (full - start) * step / self.batch_warmup_steps
        return max(start, int(ramp) // per_micro * per_micro)

    def global_batch(self, world_size: int, where: str = "") -> int:
        """The global batch on `world_size` ranks: micro_batch_size x grad_accum_steps x world_size.

        The one copy of the rule (trainer, DeepSpeed config and launcher all ask here). `where` says
        what set the world size (e.g. "--nodes 2 x --gpus-per-node 4"), for the message. Raises
        ConfigError when global_batch_size is set and differs, naming the numbers and a fix.
        """
        actual = self.micro_batch_size * self.grad_accum_steps * world_size
        if self.global_batch_size is not None and self.global_batch_size != actual:
            origin = f", {where}" if where else ""
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} but train.micro_batch_size "
                f"({self.micro_batch_size}) x train.grad_accum_steps ({self.grad_accum_steps}) x world size "
                f"({world_size}{origin}) = {actual}; change one of them (e.g. train.grad_accum_steps="
                f"{max(1, self.global_batch_size // (self.micro_batch_size * world_size))})"
            )
        return actual


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: Literal["adamw", "lamb"] = "adamw"
    """adamw (fused on GPU) or lamb (DeepSpeed's, for large batches)."""
    lr: float = 1e-4
    """Peak learning rate, reached after warmup_steps."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases and LayerNorm weights)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam beta1, beta2."""
    eps: float = 1e-6
    """Adam epsilon."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr over this many steps; at most train.max_steps (a run that ends still
    warming up is refused)."""
    schedule: Literal["linear", "cosine", "polynomial", "constant", "wsd"] = "linear"
    """Decay after warmup down to min_lr_ratio x lr at train.max_steps (or at the end of the phase's LR
    segment, see `phases`). wsd: warmup, stable at lr, then a decay of decay_shape over the last
    decay_steps (or decay_fraction) of the steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    """schedule=wsd: the decay's shape (1-sqrt: lr x (1 - sqrt(progress)), as in MiniCPM and ModernBERT)."""
    decay_steps: int | None = None
    """schedule=wsd: the decay's length in steps, ending at the segment's end (exclusive with
    decay_fraction). A decay branch from a stable checkpoint sets train.max_steps = its step + this."""
    decay_fraction: float | None = None
    """schedule=wsd: the decay's length as a fraction of the segment's steps (default 0.1 when
    decay_steps is unset too)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""

    def __post_init__(self) -> None:
        require(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two in [0, 1)"
        )
        require(self.eps > 0, "optim.eps must be > 0")
        require(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        require(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
        require(
            self.decay_steps is None or self.decay_fraction is None,
            "optim.decay_steps and optim.decay_fraction both set; set one of them",
        )
        require(self.decay_steps is None or self.decay_steps >= 1, "optim.decay_steps must be >= 1")
        require(
            self.decay_fraction is None or 0.0 < self.decay_fraction <= 1.0,
            f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}",
        )
        for name in ("decay_steps", "decay_fraction"):
            require(
                getattr(self, name) is None or self.schedule == "wsd",
                f"optim.{name} is for optim.schedule=wsd, not {self.schedule}; remove it or use wsd",
            )
        require(self.grad_clip >= 0, "optim.grad_clip must be >= 0")

    def decay_length(self, segment_steps: int) -> int:
        """schedule=wsd: the decay's steps in a segment of `segment_steps` (decay_steps, else
        decay_fraction, default 0.1, of the segment; at least 1)."""
        if self.decay_steps is not None:
            return self.decay_steps
        fraction = 0.1 if self.decay_fraction is None else self.decay_fraction
        return max(1, round(fraction * segment_steps))


@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO partitioning."""

    stage: int = 2
    """0: plain data parallel; 1: optimizer state; 2: + gradients; 3: + parameters partitioned."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO-Offload)."""

    def __post_init__(self) -> None:
        require(self.stage in (0, 1, 2, 3), f"zero.stage must be 0, 1, 2 or 3, got {self.stage}")


@dataclass
class Fp16Config:
    """Dynamic loss scaling of precision=fp16 (DeepSpeed's; ignored at other precisions).

    An fp16 step whose gradients overflow is skipped by DeepSpeed (no update, `skipped_steps` counted, the
    LR schedule held) and is not a bad loss for `health.max_nonfinite_skips`; a NaN/Inf *loss* still is.
    The raw `deepspeed.fp16.*` keys are generated from these; a contradicting one is refused.
    """

    initial_scale_power: int = 16
    """The loss scale starts at 2**initial_scale_power."""
    loss_scale_window: int = 1000
    """Optimizer steps without an overflow after which the scale doubles."""
    hysteresis: int = 2
    """Overflows absorbed before the scale halves (ZeRO 1-3; ZeRO-0's optimizer halves on every one)."""
    min_loss_scale: int = 1
    """The floor: a step that still overflows at this scale stops the run (exit 1, last checkpoint kept)."""

    def __post_init__(self) -> None:
        require(
            0 <= self.initial_scale_power <= 63,
            f"fp16.initial_scale_power must be in [0, 63], got {self.initial_scale_power}",
        )
        for name in ("loss_scale_window", "hysteresis", "min_loss_scale"):
            require(getattr(self, name) >= 1, f"fp16.{name} must be >= 1, got {getattr(self, name)}")
        require(
            self.min_loss_scale <= 2**self.initial_scale_power,
            f"fp16.min_loss_scale ({self.min_loss_scale}) must not exceed the initial scale "
            f"2**fp16.initial_scale_power ({2**self.initial_scale_power})",
        )


@dataclass
class CheckpointConfig:
    """When checkpoints are written and which are kept."""

    every_steps: int | None = 1000
    """Save every this many optimizer steps (None: only at the end and on signals)."""
    every_minutes: float | None = None
    """Also save when this many minutes passed since the last save."""
    keep_last: int = 3
    """Keep the newest this many checkpoints."""
    keep_every: int | None = None
    """Also keep every checkpoint whose step is a multiple of this."""

    def __post_init__(self) -> None:
        require(self.every_steps is None or self.every_steps >= 1, "checkpoint.every_steps must be >= 1")
        require(self.every_minutes is None or self.every_minutes > 0, "checkpoint.every_minutes must be > 0")
        require(self.keep_last >= 1, "checkpoint.keep_last must be >= 1")
        require(self.keep_every is None or self.keep_every >= 1, "checkpoint.keep_every must be >= 1")


@dataclass
class EvalConfig:
    """Evaluation on the validation split."""

    every_steps: int | None = 1000
    """Evaluate every this many optimizer steps and at the end (None: only at the end)."""
    max_batches: int | None = 50
    """Micro-batches per rank per evaluation (None: the whole validation split)."""

    def __post_init__(self) -> None:
        require(self.every_steps is None or self.every_steps >= 1, "eval.every_steps must be >= 1")
        require(self.max_batches is None or self.max_batches >= 1, "eval.max_batches must be >= 1")


@dataclass
class MetricsConfig:
    """Logging of training metrics."""

    tensorboard: bool = True
    """Write TensorBoard scalars to run_dir/tensorboard (rank 0)."""
    peak_tflops_per_device: float | None = None
    """Peak dense TFLOP/s of one device at the training precision, for MFU (None: MFU not reported)."""


@dataclass
class HealthConfig:
    """What the run does about non-finite losses and hung or dead peers.

    A step whose loss is NaN or Inf on any rank is reported at that step with the rank(s) named, and its
    update is not applied: DeepSpeed's ZeRO 1-3 and bf16 optimizers drop a step whose gradient norm is not
    finite (gradients cleared, `skipped_steps` counted), and under ZeRO-0 fp32, which has no such check,
    the trainer drops the step's gradients itself. After more than `max_nonfinite_skips` bad steps in a
    row the run stops with exit 1 without saving, so `latest` keeps pointing at the last good checkpoint.
    """

    max_nonfinite_skips: int = 3
    """Consecutive optimizer steps with a NaN/Inf loss to skip (no update) before stopping with exit 1."""
    collective_timeout_minutes: float = 30.0
    """A collective that waits longer than this (a hung or dead rank) ends the job instead of hanging."""

    def __post_init__(self) -> None:
        require(self.max_nonfinite_skips >= 0, "health.max_nonfinite_skips must be >= 0")
        require(self.collective_timeout_minutes > 0, "health.collective_timeout_minutes must be > 0")


@dataclass
class DebugConfig:
    """Diagnostics for proving and testing the trainer's guarantees; off in normal runs."""

    log_sample_indices: bool = False
    """Add `epoch` and `samples` (the global sample indices of the step, in rank order) to each step
    record of metrics.jsonl, to prove a resumed run repeats and skips nothing."""
    nonfinite_loss_steps: list = field(default_factory=list)
    """Optimizer steps (1-based) whose loss is made NaN on rank fault_rank (fault injection)."""
    nonfinite_grad_steps: list = field(default_factory=list)
    """Optimizer steps (1-based) whose gradients are made non-finite on rank fault_rank while the logged
    loss stays finite: an fp16 overflow (fault injection)."""
    data_error_steps: list = field(default_factory=list)
    """Optimizer steps (1-based) whose data the loader thread of rank fault_rank fails to read (fault
    injection)."""
    fault_rank: int = 0
    """The rank that injects the faults of nonfinite_loss_steps, nonfinite_grad_steps, data_error_steps."""
    log_collectives: bool = False
    """Add `collectives` (how many the trainer sent through pretrain/runtime/collectives.py since the previous
    record) to each step record of metrics.jsonl."""

    def __post_init__(self) -> None:
        for name in ("nonfinite_loss_steps", "nonfinite_grad_steps", "data_error_steps"):
            steps = getattr(self, name)
            require(
                all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps),
                f"debug.{name} must be a list of steps >= 1, got {steps!r}",
            )
        require(self.fault_rank >= 0, "debug.fault_rank must be >= 0")
