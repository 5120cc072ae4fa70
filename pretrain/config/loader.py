"""Typed training configuration: one dataclass per section, and loading a file into them (the reading
itself, YAML with `base:`, overrides and the strict typed build, is pretrain/config/io.py).

A config file is YAML whose top level holds `run_dir`, `precision`, the section names below and
optionally `base: other.yaml` (a file, relative to this one, whose keys this file overrides). Every
key is checked: an unknown key is a `ConfigError` naming the key path and the closest valid key; a
value of the wrong type names the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import yaml

from data_pipeline.integrity import write_atomic
from pretrain.config.io import ConfigError, build_dataclass, read_config_dict

# The one place the model sizes live (Turc et al. 2019 "Well-Read Students" sizes; BERT base/large).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_layers": 2, "hidden_size": 128, "num_heads": 2, "intermediate_size": 512},
    "mini": {"num_layers": 4, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024},
    "small": {"num_layers": 4, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "medium": {"num_layers": 8, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "base": {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072},
    "large": {"num_layers": 24, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 4096},
}


# What train.resume_allow_changed may name (each is a part of a checkpoint's identity: run_identity.py).
RESUME_ALLOWABLE_CHANGES = ("model", "tokenizer", "data", "seq_len", "seed")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class DataConfig:
    """Where the training shards are and how they are read."""

    path: str = ""
    """Shards directory written by `mlm-data build` (holds manifest.json). Required."""
    seq_len: int | None = None
    """Sequence length to train on; None = the shards' seq_len. Must not exceed the shards' seq_len."""
    prefetch_batches: int = 2
    """Optimizer steps' worth of batches the background thread prepares ahead of the loop."""

    def __post_init__(self) -> None:
        _check(self.seq_len is None or self.seq_len > 0, f"data.seq_len must be > 0, got {self.seq_len}")
        _check(self.prefetch_batches >= 1, f"data.prefetch_batches must be >= 1, got {self.prefetch_batches}")


@dataclass
class ModelConfig:
    """The BERT encoder's shape; `preset` fills every shape field left unset."""

    preset: Literal["tiny", "mini", "small", "medium", "base", "large"] | None = None
    """Named size (see MODEL_PRESETS in pretrain/config/loader.py); explicit fields below override it."""
    hidden_size: int | None = None
    """Width of the hidden states."""
    num_layers: int | None = None
    """Number of transformer layers."""
    num_heads: int | None = None
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int | None = None
    """Width of the feed-forward layer (4 x hidden_size in BERT)."""
    max_position_embeddings: int = 512
    """Size of the learned position table; the longest sequence the model can take."""
    dropout: float = 0.1
    """Dropout on embeddings and hidden states (hidden_dropout_prob)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities (attention_probs_dropout_prob)."""
    init_from: str | None = None
    """A Hugging Face BERT checkpoint directory to continue pretraining from; its config sets the shape."""
    pair_head: Literal["auto", "none"] = "auto"
    """auto: add the NSP/SOP head when the shards hold sentence pairs; none: MLM only."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel of the transformers BERT encoder."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            for name, value in MODEL_PRESETS[self.preset].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        if self.init_from is None:
            missing = [n for n in MODEL_PRESETS["tiny"] if getattr(self, n) is None]
            _check(
                not missing,
                f"model: {', '.join('model.' + m for m in missing)} not set; "
                f"set them or choose model.preset from {sorted(MODEL_PRESETS)}",
            )
        for name in MODEL_PRESETS["tiny"]:
            value = getattr(self, name)
            _check(value is None or value > 0, f"model.{name} must be > 0, got {value}")
        if self.hidden_size and self.num_heads:
            _check(
                self.hidden_size % self.num_heads == 0,
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})",
            )
        for name in ("dropout", "attention_dropout"):
            _check(0.0 <= getattr(self, name) < 1.0, f"model.{name} must be in [0, 1)")


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
        _check(0.0 < self.probability < 1.0, f"masking.probability must be in (0, 1), got {self.probability}")
        _check(
            self.mask_token_ratio >= 0 and self.random_token_ratio >= 0,
            "masking.mask_token_ratio and masking.random_token_ratio must be >= 0",
        )
        _check(
            self.mask_token_ratio + self.random_token_ratio <= 1.0 + 1e-9,
            f"masking.mask_token_ratio + masking.random_token_ratio must be <= 1, got "
            f"{self.mask_token_ratio} + {self.random_token_ratio}",
        )
        _check(
            self.span_mean_length >= 1.0,
            f"masking.span_mean_length must be >= 1, got {self.span_mean_length}",
        )
        _check(self.span_max_length >= 1, f"masking.span_max_length must be >= 1, got {self.span_max_length}")


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
    model (shape), tokenizer, data (build identity), seq_len, seed. E.g. `[data]` to continue on a new
    build of the corpus on purpose."""
    max_tokens: int | None = None
    """Stop once this many (non-pad) training tokens have been consumed."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this many minutes of training."""
    log_every_steps: int = 10
    """Progress log line / TensorBoard interval in optimizer steps (metrics.jsonl gets every step)."""
    deterministic: bool = False
    """Deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG, attention
    kernels that honour it): bit-identical losses on GPU too, at some speed. CPU runs are bit-identical
    without it."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "grad_accum_steps", "log_every_steps"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        _check(
            self.global_batch_size is None or self.global_batch_size >= 1,
            f"train.global_batch_size must be >= 1, got {self.global_batch_size}",
        )
        _check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        _check(bool(self.resume), "train.resume must be 'auto', 'none' or a checkpoint path")
        _check(
            all(name in RESUME_ALLOWABLE_CHANGES for name in self.resume_allow_changed),
            f"train.resume_allow_changed must list names from {', '.join(RESUME_ALLOWABLE_CHANGES)}, "
            f"got {self.resume_allow_changed!r}",
        )
        _check(self.max_tokens is None or self.max_tokens > 0, "train.max_tokens must be > 0")
        _check(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes must be > 0")

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
    """Linear warmup from 0 to lr over this many steps."""
    schedule: Literal["linear", "cosine", "polynomial", "constant"] = "linear"
    """Decay after warmup down to min_lr_ratio x lr at train.max_steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas must be two in [0, 1)"
        )
        _check(self.eps > 0, "optim.eps must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
        _check(self.grad_clip >= 0, "optim.grad_clip must be >= 0")


@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO partitioning."""

    stage: int = 2
    """0: plain data parallel; 1: optimizer state; 2: + gradients; 3: + parameters partitioned."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (ZeRO-Offload)."""

    def __post_init__(self) -> None:
        _check(self.stage in (0, 1, 2, 3), f"zero.stage must be 0, 1, 2 or 3, got {self.stage}")


@dataclass
class Fp16Config:
    """Dynamic loss scaling of precision=fp16 (DeepSpeed's; ignored at other precisions)."""

    initial_scale_power: int = 16
    """The loss scale starts at 2**initial_scale_power."""
    loss_scale_window: int = 1000
    """Optimizer steps without an overflow after which the scale doubles."""
    hysteresis: int = 2
    """Overflows absorbed before the scale halves (ZeRO 1-3; ZeRO-0's optimizer halves on every one)."""
    min_loss_scale: int = 1
    """The floor: a step that still overflows at this scale stops the run (exit 1, last checkpoint kept)."""

    def __post_init__(self) -> None:
        _check(
            0 <= self.initial_scale_power <= 63,
            f"fp16.initial_scale_power must be in [0, 63], got {self.initial_scale_power}",
        )
        for name in ("loss_scale_window", "hysteresis", "min_loss_scale"):
            _check(getattr(self, name) >= 1, f"fp16.{name} must be >= 1, got {getattr(self, name)}")
        _check(
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
        _check(self.every_steps is None or self.every_steps >= 1, "checkpoint.every_steps must be >= 1")
        _check(self.every_minutes is None or self.every_minutes > 0, "checkpoint.every_minutes must be > 0")
        _check(self.keep_last >= 1, "checkpoint.keep_last must be >= 1")
        _check(self.keep_every is None or self.keep_every >= 1, "checkpoint.keep_every must be >= 1")


@dataclass
class EvalConfig:
    """Evaluation on the validation split."""

    every_steps: int | None = 1000
    """Evaluate every this many optimizer steps and at the end (None: only at the end)."""
    max_batches: int | None = 50
    """Micro-batches per rank per evaluation (None: the whole validation split)."""

    def __post_init__(self) -> None:
        _check(self.every_steps is None or self.every_steps >= 1, "eval.every_steps must be >= 1")
        _check(self.max_batches is None or self.max_batches >= 1, "eval.max_batches must be >= 1")


@dataclass
class MetricsConfig:
    """Logging of training metrics."""

    tensorboard: bool = True
    """Write TensorBoard scalars to run_dir/tensorboard (rank 0)."""
    peak_tflops_per_device: float | None = None
    """Peak dense TFLOP/s of one device at the training precision, for MFU (None: MFU not reported)."""


@dataclass
class HealthConfig:
    """What the run does about non-finite losses and hung or dead peers."""

    max_nonfinite_skips: int = 3
    """Consecutive optimizer steps with a NaN/Inf loss to skip (no update) before stopping with exit 1."""
    collective_timeout_minutes: float = 30.0
    """A collective that waits longer than this (a hung or dead rank) ends the job instead of hanging."""

    def __post_init__(self) -> None:
        _check(self.max_nonfinite_skips >= 0, "health.max_nonfinite_skips must be >= 0")
        _check(self.collective_timeout_minutes > 0, "health.collective_timeout_minutes must be > 0")


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
            _check(
                all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps),
                f"debug.{name} must be a list of steps >= 1, got {steps!r}",
            )
        _check(self.fault_rank >= 0, "debug.fault_rank must be >= 0")


@dataclass
class Config:
    """A whole training run."""

    run_dir: str = ""
    """Directory for config.yaml, metrics.jsonl, tensorboard/ and checkpoints/. Required."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision; fp16 (dynamic loss scaling, see the fp16 section) needs a GPU."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset="base"))
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    deepspeed: dict = field(default_factory=dict)
    """Extra raw DeepSpeed config keys merged into the generated config; contradictions are refused."""

    def __post_init__(self) -> None:
        _check(bool(self.run_dir), "run_dir is required (set it in the YAML or pass run_dir=PATH)")
        _check(bool(self.data.path), "data.path is required (a shards directory from `mlm-data build`)")


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Load the YAML at `path` (following `base:`), apply `section.key=value` overrides, validate.

    Returns the resolved Config. Raises ConfigError naming the file, key or value that is wrong.
    """
    return config_from_dict(read_config_dict(path, overrides), source=path)


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Build a validated Config from a plain nested dict (as in YAML); raises ConfigError."""
    try:
        return build_dataclass(Config, raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts/lists/scalars (tuples become lists), ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML to `path` (temp file + rename, so a reader never sees half)."""
    write_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_hash(cfg: Config) -> str:
    """sha256 hex digest of the resolved config (canonical JSON), to tell runs' configs apart."""
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()
