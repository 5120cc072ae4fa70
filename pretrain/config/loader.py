"""The whole run's config (`Config`: top-level keys and every section) and its file: loading a YAML file
into it, the resolved config written into the run dir, its hash.

A config file is YAML whose top level holds `run_dir`, `precision`, the section names below and
optionally `base: other.yaml` (a file, relative to this one, whose keys this file overrides). Every
key is checked: an unknown key is a `ConfigError` naming the key path and the closest valid key; a
value of the wrong type names the key and the expected type. The `model` section's keys are those of
the architecture `model.arch` names (pretrain/models/registry.py; default bert).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml

from data_pipeline.integrity import write_atomic
from pretrain.config.files import read_config_dict
from pretrain.config.phases import PhaseConfig, lr_segments, phase_configs
from pretrain.config.sections import (
    CheckpointConfig,
    DataConfig,
    DebugConfig,
    EvalConfig,
    Fp16Config,
    HealthConfig,
    MaskingConfig,
    MetricsConfig,
    OptimConfig,
    TrainConfig,
    ZeroConfig,
)
from pretrain.config.typed import ChosenBy, build_dataclass, to_plain
from pretrain.errors import ConfigError, require
from pretrain.models.registry import DEFAULT_ARCH, MODEL_SECTIONS

# The `model` section: the config dataclass of the architecture its `arch` key names.
ModelSection = Annotated[Any, ChosenBy("arch", MODEL_SECTIONS, default=DEFAULT_ARCH)]


def _default_model():
    return MODEL_SECTIONS[DEFAULT_ARCH](preset="base")


@dataclass
class Config:
    """A whole training run."""

    run_dir: str = ""
    """Directory for config.yaml, metrics.jsonl, tensorboard/ and checkpoints/. Required."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision; fp16 (dynamic loss scaling, see the fp16 section) needs a GPU."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=_default_model)
    """The model: its architecture (`model.arch`) and that architecture's shape and options."""
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
    phases: list[PhaseConfig] = field(default_factory=list)
    """Training phases after the base config (phase 0), in the order they start: each a start_step or
    start_tokens and the partial sections it changes (see the `phases[]` section)."""

    def __post_init__(self) -> None:
        require(bool(self.run_dir), "run_dir is required (set it in the YAML or pass run_dir=PATH)")
        require(
            bool(self.data.path) or self.data.is_mixture,
            "data.path is required (a shards directory from `mlm-data build`), or data.sources (a mixture)",
        )
        if self.phases:
            phase_configs(self)  # each merged phase is a valid config, and the phases are in order


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Load the YAML at `path` (following `base:`), apply `section.key=value` overrides, validate.

    Returns the resolved Config. Raises ConfigError naming the file, key or value that is wrong.
    """
    return config_from_dict(read_config_dict(path, overrides), source=path)


def check_trainable(cfg: Config, source: str = "<dict>") -> None:
    """The checks of a config about to train (mlm-train, mlm-launch) that a saved one need not pass, so a
    checkpoint's config.yaml written before a check existed still loads for export and fine-tuning.

    Raises ConfigError prefixed by `source`: a warmup longer than its LR segment (optim.warmup_steps
    larger than train.max_steps: the run would end still warming up, at a fraction of optim.lr, without
    a word), or a wsd warmup plus decay longer than its segment (pretrain/config/phases.py).
    """
    try:
        lr_segments(cfg, phase_configs(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Build a validated Config from a plain nested dict (as in YAML); raises ConfigError."""
    try:
        return build_dataclass(Config, raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts/lists/scalars (tuples become lists), ready for YAML or JSON."""
    return to_plain(cfg)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML to `path` (temp file + rename, so a reader never sees half)."""
    write_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_hash(cfg: Config) -> str:
    """sha256 hex digest of the resolved config (canonical JSON), to tell runs' configs apart."""
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()
