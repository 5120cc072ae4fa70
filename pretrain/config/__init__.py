"""The training configuration: typed sections, the strict loader and the resolved config's file.

The one torch-free part of pretrain the launcher imports (it validates a config with the trainer's own
loader). Import from here: `from pretrain.config import Config, ConfigError, load_config`.
"""

from pretrain.config.files import read_config_dict
from pretrain.config.loader import (
    Config,
    check_trainable,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)
from pretrain.config.phases import PhaseConfig
from pretrain.config.sections import (
    RESUME_ALLOWABLE_CHANGES,
    CheckpointConfig,
    DataConfig,
    DebugConfig,
    EvalConfig,
    Fp16Config,
    HealthConfig,
    MaskingConfig,
    MetricsConfig,
    OptimConfig,
    SourceConfig,
    TrainConfig,
    ZeroConfig,
)
from pretrain.errors import ConfigError

__all__ = [
    "RESUME_ALLOWABLE_CHANGES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DebugConfig",
    "EvalConfig",
    "Fp16Config",
    "HealthConfig",
    "MaskingConfig",
    "MetricsConfig",
    "OptimConfig",
    "PhaseConfig",
    "SourceConfig",
    "TrainConfig",
    "ZeroConfig",
    "check_trainable",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "load_config",
    "read_config_dict",
    "save_config",
]
