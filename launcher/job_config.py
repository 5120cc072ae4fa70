"""The few config keys the launcher checks, read from the YAML itself (never by importing pretrain)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


class LaunchError(Exception):
    """A bad launch request; the message names the culprit and what to do. The CLI exits 1 on it."""


@dataclass(frozen=True)
class JobConfig:
    """What the launcher needs to know about a training config."""

    path: Path
    run_dir: str
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int | None

    def check_world_size(self, world_size: int, where: str) -> None:
        """Raise LaunchError if train.global_batch_size is set and != micro x accum x world_size.

        `where` names what set the world size (e.g. "--nodes 2 x --gpus-per-node 4") for the message.
        """
        actual = self.micro_batch_size * self.grad_accum_steps * world_size
        if self.global_batch_size is not None and self.global_batch_size != actual:
            raise LaunchError(
                f"{self.path}: train.global_batch_size={self.global_batch_size} but train.micro_batch_size "
                f"({self.micro_batch_size}) x train.grad_accum_steps ({self.grad_accum_steps}) x world size "
                f"{world_size} ({where}) = {actual}; change the node/GPU count or the batch keys"
            )


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Load a config file, merging its `base:` files first (same rule as pretrain's config loader)."""
    if not path.is_file():
        raise LaunchError(f"config file not found: {path} (pass --config with an existing YAML file)")
    if path.resolve() in seen:
        raise LaunchError(f"{path}: `base:` files form a cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise LaunchError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: the top level must be a mapping of sections")
    bases = data.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_update(merged, _load_yaml(path.parent / base, seen + (path.resolve(),)))
    _deep_update(merged, data)
    return merged


def _deep_update(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


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
    """Read run_dir and the batch keys from the trainer arguments (--config FILE plus overrides).

    Raises LaunchError for a missing/unreadable config, a missing run_dir, or a batch key that is not a
    positive integer (naming the key and whether the file or a `key=value` override set it).
    """
    path, overrides = find_config_arg(train_args)
    data = _load_yaml(path)
    overridden = set()
    for item in overrides:
        if "=" in item and not item.startswith("-"):
            key, value = item.split("=", 1)
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            node[leaf] = _override_value(value)
            overridden.add(key)
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise LaunchError(f"{path}: train must be a mapping of keys, got {train!r}")

    def positive_int(key: str, default: int | None) -> int | None:
        value = train.get(key, default)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        where = "the command line override" if f"train.{key}" in overridden else str(path)
        raise LaunchError(f"train.{key}={value!r} (from {where}) must be a positive integer")

    run_dir = data.get("run_dir")
    if not run_dir:
        raise LaunchError(f"{path}: run_dir is not set (set it in the YAML or pass run_dir=PATH)")
    if isinstance(run_dir, (dict, list, bool)):
        raise LaunchError(f"{path}: run_dir={run_dir!r} must be a directory path")
    return JobConfig(
        path=path,
        run_dir=str(run_dir),
        micro_batch_size=positive_int("micro_batch_size", 32),
        grad_accum_steps=positive_int("grad_accum_steps", 1),
        global_batch_size=positive_int("global_batch_size", None),
    )


def _override_value(text: str):
    """A `key=value` override's value as YAML reads it; text YAML cannot read is kept as a string (the
    trainer reports it if the key matters; the launcher checks the few keys it reads itself)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
