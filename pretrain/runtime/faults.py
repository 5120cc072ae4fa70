"""Fault injection (debug.*), for the tests and for drills on a real cluster: one rank gets NaN losses,
non-finite gradients behind a finite loss (an fp16 overflow) or a loader that fails to read a step.

The training step sees none of this unless a fault applies: `Faults.at(step)` is None on every other
step, and the loader only gets a wrapped reader when data errors are injected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import DataError
from pretrain.config import DebugConfig


@dataclass(frozen=True)
class StepFault:
    """The faults of one optimizer step, applied to its first micro-batch by the training step."""

    nan_loss: bool
    nonfinite_grad: bool

    def apply(self, mlm_loss_sum, loss):
        """(mlm_loss_sum, loss) with the faults applied: a NaN MLM loss (logged and back-propagated), or
        a finite logged loss whose back-propagated loss is infinite (non-finite gradients)."""
        if self.nan_loss:
            mlm_loss_sum, loss = mlm_loss_sum * float("nan"), loss * float("nan")
        if self.nonfinite_grad:
            loss = loss * float("inf")
        return mlm_loss_sum, loss


@dataclass(frozen=True)
class Faults:
    """The faults that apply to this rank, as sets of 1-based optimizer steps."""

    nan_loss: frozenset[int] = frozenset()
    nonfinite_grad: frozenset[int] = frozenset()
    data_error: frozenset[int] = frozenset()

    @classmethod
    def for_rank(cls, debug: DebugConfig, rank: int) -> Faults:
        """The faults `debug` injects on `rank` (none unless rank == debug.fault_rank)."""
        if rank != debug.fault_rank:
            return cls()
        return cls(
            frozenset(debug.nonfinite_loss_steps),
            frozenset(debug.nonfinite_grad_steps),
            frozenset(debug.data_error_steps),
        )

    def at(self, step: int) -> StepFault | None:
        """The loss faults of 1-based optimizer step `step` on this rank, or None (no fault: the step
        runs untouched)."""
        if step not in self.nan_loss and step not in self.nonfinite_grad:
            return None
        return StepFault(step in self.nan_loss, step in self.nonfinite_grad)

    def reader(self, reader, *, micro_batches_at: Callable[[int], int], first_step: int):
        """The row source `reader`, or a wrapper whose `take` fails for the data_error steps' micro-batches.

        The loader thread calls `take` once per micro-batch in step order, starting with step
        `first_step` (1-based); `micro_batches_at(step)` is this rank's number of micro-batches in `step`
        (it varies under batch warmup), so the failure surfaces in the consumer exactly at that step's data.
        """
        if not self.data_error:
            return reader
        return _FailingReader(reader, self.data_error, micro_batches_at, first_step)


class _FailingReader:
    """A row source that delegates to another and raises DataError on the first `take` of each failing
    step; every other member of the source is the wrapped one's."""

    def __init__(self, source, steps: frozenset[int], micro_batches_at, first_step: int) -> None:
        self._source = source
        self._step_of_call = {}
        call = 0
        for step in range(first_step, max(steps, default=0) + 1):
            if step in steps:
                self._step_of_call[call] = step
            call += micro_batches_at(step)
        self._calls = 0

    def __len__(self) -> int:
        return len(self._source)

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def take(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]:
        """The source's rows, or DataError when this call is the first of a failing step."""
        call, self._calls = self._calls, self._calls + 1
        if call in self._step_of_call:
            raise DataError(
                f"injected fault (debug.data_error_steps): could not read the data of step "
                f"{self._step_of_call[call]}"
            )
        return self._source.take(indices, epoch)
