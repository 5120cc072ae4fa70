"""Weights-only loading of DeepSpeed's checkpoint files: nothing a checkpoint holds can run code.

DeepSpeed writes its model and optimizer states with `torch.save` (a pickle inside a zip) and reads them
back with `torch.load(weights_only=False)`, which runs whatever the pickle says. torch's weights-only
unpickler accepts only tensors, containers, numbers and strings plus an explicit allow-list of classes;
with deepspeed 0.19.8 its files (ZeRO 0-3, fp32/bf16/fp16, and the universal checkpoint the elastic
resume converts to) need just the four plain data classes of `DEEPSPEED_SAFE_GLOBALS`.

`load_weights_only(path)` is our own load; `deepspeed_loads_weights_only()` makes every `torch.load`
that DeepSpeed issues inside the block (engine.load_checkpoint, ds_to_universal, zero_to_fp32) a
weights-only load: DeepSpeed has no single hook for all of them (its checkpoint engine covers only
some), so the block swaps `torch.load` itself and restores it on exit.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Iterator

import torch

from pretrain.checkpoint.record import CheckpointError

__all__ = ["deepspeed_loads_weights_only", "deepspeed_safe_globals", "load_weights_only"]

_ORIGINAL_LOAD = torch.load


@functools.cache
def deepspeed_safe_globals() -> tuple[type, ...]:
    """The DeepSpeed classes its checkpoint files pickle (plain records: an enum, two loss-scaler
    settings holders and a (start, numel) pair); nothing else is allow-listed."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _weights_only_load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
    """torch.load with weights_only forced on (whatever the caller asked) and DeepSpeed's classes allowed.

    Raises CheckpointError naming the file when it is not a weights-only loadable file (a pickle that
    wants another class or a callable, a torn zip): one line, never the payload's side effects.
    """
    del weights_only  # DeepSpeed passes False; that is exactly what this wrapper exists to override
    if pickle_module is not None:
        raise CheckpointError(f"{f}: refusing torch.load with a custom pickle module")
    try:
        with torch.serialization.safe_globals(list(deepspeed_safe_globals())):
            return _ORIGINAL_LOAD(f, map_location=map_location, weights_only=True, mmap=mmap, **kwargs)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:  # OSError (missing file) passes as is
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{f} is not a plain tensor file (weights-only load refused it: {_first_line(e)}); "
            "refusing to load it: the checkpoint is corrupt or was tampered with"
        ) from e


def load_weights_only(path: str) -> dict:
    """The object stored at `path` by torch.save, loaded weights-only onto the CPU.

    Raises CheckpointError naming the file when it needs anything but tensors, containers, scalars and
    DeepSpeed's allow-listed classes (see `deepspeed_safe_globals`), or is not a torch file at all.
    """
    return _weights_only_load(path, map_location="cpu")


@contextlib.contextmanager
def deepspeed_loads_weights_only() -> Iterator[None]:
    """Within the block, every torch.load (DeepSpeed's included) is weights-only; reentrant.

    Not for concurrent use with unrelated torch.load calls in other threads (they would be weights-only
    too, which is only stricter). Loading errors surface as CheckpointError naming the file.
    """
    if torch.load is _weights_only_load:
        yield
        return
    torch.load = _weights_only_load
    try:
        yield
    finally:
        torch.load = _ORIGINAL_LOAD
