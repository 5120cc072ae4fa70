"""The training config as the launcher checks it: read and validated by the trainer's own loader.

`pretrain.config` is the one shared leaf the launcher imports from pretrain (it needs neither torch nor
numpy, so the launcher stays light): a config the launcher accepts is one the trainer accepts, and a
job is never submitted only to exit 1 on the cluster for a config error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrain.config import Config, ConfigError, check_trainable, config_from_dict, read_config_dict


class LaunchError(Exception):
    """A bad launch request; the message names the culprit and what to do. The CLI exits 1 on it."""


@dataclass(frozen=True)
class JobConfig:
    """What the launcher needs to know about a training config: its file and the validated Config."""

    path: Path
    config: Config

    @property
    def run_dir(self) -> str:
        """The run directory (validated non-empty by the trainer's loader)."""
        return self.config.run_dir

    @property
    def global_batch_size(self) -> int | None:
        """train.global_batch_size as set (None: derived from the world size)."""
        return self.config.train.global_batch_size

    def check_world_size(self, world_size: int, where: str) -> None:
        """Raise LaunchError if train.global_batch_size is set and != micro x accum x world_size.

        `where` names what set the world size (e.g. "--nodes 2 x --gpus-per-node 4") for the message.
        """
        try:
            self.config.train.global_batch(world_size, where)
        except ConfigError as err:
            raise LaunchError(f"{self.path}: {err}") from None


def find_config_arg(train_args: list[str]) -> tuple[Path, list[str]]:
    """Split trainer arguments into the --config path and the `key=value` overrides.

    Raises LaunchError when --config is missing.
    """
    args = list(train_args)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return Path(args[i + 1]), args[:i] + args[i + 2 :]
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1]), args[:i] + args[i + 1 :]
    raise LaunchError("no --config FILE after `--` (usage: mlm-launch ... -- --config FILE [key=value ...])")


def read_job_config(train_args: list[str]) -> JobConfig:
    """Read and validate the config the trainer arguments name (--config FILE plus overrides).

    Returns the JobConfig. Raises LaunchError (one line) for anything the trainer's loader refuses: a
    missing or invalid file, a `base:` that is not one file, an unknown key, a bad value. The batch keys
    and run_dir are checked first so the message says whether the file or a `key=value` override set a
    bad one.
    """
    path, args = find_config_arg(train_args)
    overrides = [a for a in args if "=" in a and not a.startswith("-")]  # the trainer's own flags pass
    try:
        raw = read_config_dict(str(path), overrides)
        _check_launch_keys(raw, path, {item.split("=", 1)[0] for item in overrides})
        config = config_from_dict(raw, source=str(path))
        check_trainable(config, str(path))
        return JobConfig(path=path, config=config)
    except ConfigError as err:
        message = " ".join(str(err).split())
        if "config file not found" in message:
            message += " (pass --config with an existing YAML file)"
        raise LaunchError(message) from None


def _check_launch_keys(raw: dict, path: Path, overridden: set[str]) -> None:
    """The keys the launcher itself uses, each named with where its bad value came from."""
    train = raw.get("train", {})
    if not isinstance(train, dict):
        raise LaunchError(f"{path}: train must be a mapping of keys, got {train!r}")
    for key in ("micro_batch_size", "grad_accum_steps", "global_batch_size"):
        value = train.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            continue
        where = "the command line override" if f"train.{key}" in overridden else str(path)
        raise LaunchError(f"train.{key}={value!r} (from {where}) must be a positive integer")
    run_dir = raw.get("run_dir")
    if not run_dir:
        raise LaunchError(f"{path}: run_dir is not set (set it in the YAML or pass run_dir=PATH)")
    if isinstance(run_dir, (dict, list, bool)):
        raise LaunchError(f"{path}: run_dir={run_dir!r} must be a directory path")
