"""The trainer's bad-configuration error, in a leaf module.

Every config section imports it: the trainer's own (pretrain/config/) and each model architecture's
(pretrain/models/<arch>/config.py), which the config package in turn imports through the model registry;
a leaf keeps that one-way.
"""


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names the file or key and what to do."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(`message`) unless `condition` holds: the check of a section's `__post_init__`."""
    if not condition:
        raise ConfigError(message)
