"""A config's phases: the `phases[]` section (`PhaseConfig`) and its resolution: each phase's whole
config (its partial sections deep-merged over the phase before it, checked by the same typed builder as
a file), which phase a step is in, and where a phase starts a new sample stream or LR segment.
Torch-free, like the rest of the config package.

Phase 0 is the base config (without `phases`); phase i > 0 is `phases[i - 1]`. Phases are entered in
order: phase i + 1 once its start (start_step or start_tokens) is reached after phase i was entered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from pretrain.config.files import deep_merge
from pretrain.config.typed import build_dataclass, to_plain
from pretrain.errors import ConfigError, require

# The keys of `train` and `optim` a phase may set (the others shape the whole run: the engine, the
# optimizer's kind, the budgets).
PHASE_TRAIN_KEYS = ("micro_batch_size", "grad_accum_steps", "global_batch_size")
PHASE_OPTIM_KEYS = (
    "lr",
    "warmup_steps",
    "schedule",
    "min_lr_ratio",
    "decay_shape",
    "decay_steps",
    "decay_fraction",
)


@dataclass
class PhaseConfig:
    """One training phase: from its start on, the keys it lists replace those of the phase before it
    (the base config is phase 0). Its sections are partial: `{start_step: 20000, masking: {probability:
    0.15}}` changes the mask rate only. The merged config of each phase is checked like a whole config
    when the file is loaded.

    Crossing a boundary keeps the weights, the optimizer state and the step and token counters. A phase
    whose `data` section differs from the one before (other than prefetch_batches) opens its own row
    sources and starts a new sample stream over them: epoch 0 of an order seeded from (train.seed, the
    phase's index), so which rows a step reads stays a pure function of the config and the step. A
    phase that keeps the data continues the stream where it was. A phase that sets `optim` keys starts
    a new LR segment (its warmup and decay count from its start_step, up to the next such phase or
    train.max_steps). A resume refuses a changed phase that had started at the checkpoint (unless
    train.resume_allow_changed lists `phases`); a phase that had not started yet may be changed.
    """

    start_step: int | None = None
    """The phase trains from the update after this many steps (exclusive with start_tokens)."""
    start_tokens: int | None = None
    """The phase trains from the first step after this many training tokens (counted as `tokens` in
    metrics.jsonl); it may not set `optim` keys, whose segments need known steps."""
    data: dict = field(default_factory=dict)
    """Keys of the `data` section for this phase (e.g. path: another shard set, seq_len: 512)."""
    masking: dict = field(default_factory=dict)
    """Keys of the `masking` section for this phase (e.g. probability: 0.05)."""
    train: dict = field(default_factory=dict)
    """train.micro_batch_size, grad_accum_steps, global_batch_size for this phase."""
    optim: dict = field(default_factory=dict)
    """The LR schedule of the segment this phase starts: optim.lr, warmup_steps, schedule, min_lr_ratio,
    decay_shape, decay_steps, decay_fraction (with start_step only)."""

    def __post_init__(self) -> None:
        require(
            (self.start_step is None) != (self.start_tokens is None),
            "a phase needs one of start_step or start_tokens",
        )
        start = self.start_step if self.start_tokens is None else self.start_tokens
        require(start >= 1, f"a phase's start must be >= 1 (the base config is phase 0), got {start}")
        for section, allowed in (("train", PHASE_TRAIN_KEYS), ("optim", PHASE_OPTIM_KEYS)):
            extra = sorted(set(getattr(self, section)) - set(allowed))
            require(
                not extra,
                f"{section}.{', '.join(map(str, extra))} cannot change in a phase; a phase's {section} "
                f"may set {', '.join(allowed)}",
            )
        require(
            not (self.optim and self.start_tokens is not None),
            "a phase that sets optim keys must start by start_step (an LR segment needs known steps)",
        )

    def overrides(self) -> dict:
        """The sections this phase sets, as a partial config mapping."""
        return {
            name: getattr(self, name) for name in ("data", "masking", "train", "optim") if getattr(self, name)
        }


# data keys whose change does not change the rows read (a new stream is not needed for them).
_DATA_KEYS_NOT_ROWS = ("prefetch_batches",)


def phase_configs(cfg) -> list:
    """[phase 0's Config (the base, without phases), phase 1's, ...]: each phase's partial sections
    merged over the phase before it and built by the typed builder.

    Raises ConfigError naming `phases[i]` when a merged phase is not a valid config, when step starts
    do not increase (or reach train.max_steps), or when token starts do not increase.
    """
    raw = to_plain(cfg)
    raw["phases"] = []
    configs = [build_dataclass(type(cfg), raw)] if cfg.phases else [cfg]
    for i, phase in enumerate(cfg.phases):
        raw = deep_merge(raw, phase.overrides())
        try:
            configs.append(build_dataclass(type(cfg), raw))
        except ConfigError as exc:
            raise ConfigError(f"phases[{i}]: {exc}") from None
    _check_order(cfg)
    return configs


def _check_order(cfg) -> None:
    last = {"start_step": 0, "start_tokens": 0}
    for i, phase in enumerate(cfg.phases):
        key = "start_step" if phase.start_step is not None else "start_tokens"
        start = getattr(phase, key)
        if start <= last[key]:
            raise ConfigError(
                f"phases[{i}].{key}={start} must be larger than the phase before it ({last[key]}); "
                "list phases in the order they start"
            )
        if key == "start_step" and start >= cfg.train.max_steps:
            raise ConfigError(
                f"phases[{i}].start_step={start} is not before train.max_steps={cfg.train.max_steps}: "
                "the phase would never train; raise train.max_steps or remove the phase"
            )
        last[key] = start


def phase_started(cfg, index: int, step: int, tokens: int) -> bool:
    """Whether phase `index` (> 0) of `cfg` has its start reached after `step` steps and `tokens` tokens."""
    phase = cfg.phases[index - 1]
    if phase.start_step is not None:
        return step >= phase.start_step
    return tokens >= phase.start_tokens


def due_phase(cfg, current: int, step: int, tokens: int) -> int:
    """The phase to train the next step in, from phase `current` after `step` steps and `tokens` tokens
    (phases entered in order; several at once when their starts were all reached)."""
    while current < len(cfg.phases) and phase_started(cfg, current + 1, step, tokens):
        current += 1
    return current


def rows_differ(a, b) -> bool:
    """Whether two phases' configs read other rows (their data sections differ beyond the prefetch)."""
    return _rows_keys(a.data) != _rows_keys(b.data)


def _rows_keys(data_cfg) -> dict:
    return {k: v for k, v in vars(data_cfg).items() if k not in _DATA_KEYS_NOT_ROWS}


def stream_of(configs: list, index: int) -> int:
    """The sample stream phase `index` reads: the index of the latest phase <= it that changed the rows
    (0: the base's stream)."""
    while index > 0 and not rows_differ(configs[index], configs[index - 1]):
        index -= 1
    return index


@dataclass(frozen=True)
class Segment:
    """One stretch of the LR schedule: steps [start, end) under `optim` (an OptimConfig), at `scale` x
    the run's optim.lr (the segment's lr over the base's)."""

    start: int
    end: int
    optim: object
    scale: float


def lr_segments(cfg, configs: list) -> list[Segment]:
    """The LR segments of `cfg` (its phase configs `configs`): the base's from step 0, then one from the
    start_step of each phase that sets optim keys, each up to the next (the last to train.max_steps).

    Raises ConfigError naming the phase (or `optim`) whose warmup, or warmup plus wsd decay, does not
    fit in its segment: it would end still warming up, or decay while warming up.
    """
    starts = [(0, 0)] + [(p.start_step, i + 1) for i, p in enumerate(cfg.phases) if p.optim]
    ends = [s for s, _ in starts[1:]] + [cfg.train.max_steps]
    segments = []
    for (start, index), end in zip(starts, ends, strict=True):
        o, length = configs[index].optim, end - start
        where = "optim" if index == 0 else f"phases[{index - 1}].optim"
        if o.warmup_steps > length:
            if (start, end) == (0, cfg.train.max_steps):
                span, fix = f"train.max_steps ({length})", "raise train.max_steps"
            else:
                span, fix = f"its LR segment (steps {start}-{end}: {length})", "move the phases"
            raise ConfigError(
                f"{where}.warmup_steps ({o.warmup_steps}) is larger than {span}: the run would end at "
                f"{length / o.warmup_steps:.2g} x optim.lr, still warming up; lower {where}.warmup_steps "
                f"(e.g. {where}.warmup_steps={length // 10}) or {fix}"
            )
        if o.schedule == "wsd" and o.warmup_steps + o.decay_length(length) > length:
            raise ConfigError(
                f"{where}: warmup_steps ({o.warmup_steps}) + the wsd decay ({o.decay_length(length)} "
                f"steps) exceed its {length} steps; shorten one of them"
            )
        segments.append(Segment(start, end, o, o.lr / cfg.optim.lr))
    return segments


def phase_digest(cfg, index: int, data_identity: str = "") -> str:
    """sha256 of phase `index`'s spec (its start and overrides) and `data_identity` (of the rows it
    opens, when it opens other rows: their build identity and contents): what the run identity records
    of a started phase."""
    spec = {"phase": cfg.phases[index - 1].__dict__, "data": data_identity}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
