"""The training configuration: typed sections, the strict loader and the resolved config's file.

The one torch-free part of pretrain the launcher imports (it validates a config with the trainer's own
loader). Import from here: `from pretrain.config import Config, ConfigError, load_config`.
"""

from pretrain.config.io import ConfigError, build_dataclass, read_config_dict
from pretrain.config.loader import (
    MODEL_PRESETS,
    RESUME_ALLOWABLE_CHANGES,
    CheckpointConfig,
    Config,
    DataConfig,
    DebugConfig,
    EvalConfig,
    Fp16Config,
    HealthConfig,
    MaskingConfig,
    MetricsConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ZeroConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)

__all__ = [
    "MODEL_PRESETS",
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
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "ZeroConfig",
    "build_dataclass",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "load_config",
    "read_config_dict",
    "save_config",
]
