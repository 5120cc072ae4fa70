"""Sample order: the resumable global-batch sampler.

The order is a pure function of (seed, epoch, position): epoch e visits the permutation
`numpy.random.default_rng(seed + e).permutation(num_samples)` (PCG64), a global batch is the next
`global_batch_size` positions of it and rank r of W takes the r-th contiguous slice. Resuming with
another world size but the same global batch size therefore sees the same global batches. A row source
that orders its rows itself (a mixture: pretrain/data/mixture.py) is visited in order (`shuffle=False`).
Under a batch-size warmup the batches are consecutive positions still, of the size the step's schedule
gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import DataError


@dataclass
class SamplerStep:
    """One optimizer step's samples: the epoch, the whole global batch (global sample indices), this
    rank's micro-batches (arrays of global sample indices) and the sampler state after this step."""

    epoch: int
    global_batch: np.ndarray
    micro_batches: list[np.ndarray]
    state_after: dict


class GlobalBatchSampler:
    """Yields, per optimizer step, this rank's micro-batches of global sample indices; resumable exactly.

    Takes the number of training samples, the global batch size G (must be a multiple of micro batch x
    world size; grad_accum_steps = G / (micro x world)), the seed, this rank and the world size. With
    drop_last (the default) an epoch ends before a batch would run past it; otherwise the last batch is
    filled up from the start of the same epoch's permutation. With shuffle=False every epoch visits
    0, 1, 2, ... in order (nothing is materialised). Raises ValueError on inconsistent sizes
    (DataError, a ValueError, when the split holds less than one global batch).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool = True,
        shuffle: bool = True,
        global_batch_at: Callable[[int], int] | None = None,
        first_step: int = 0,
    ) -> None:
        """Validate sizes and start at epoch 0, position 0.

        `global_batch_at` (optional: step -> global batch, a multiple of micro x world; batch-size
        warmup) gives the batch of each step, counted from `first_step` (the steps done before this
        sampler's first); without it every step takes global_batch_size."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
        per_step = micro_batch_size * world_size
        if global_batch_size % per_step:
            raise ValueError(
                f"global batch size {global_batch_size} is not a multiple of micro batch size "
                f"{micro_batch_size} x world size {world_size} = {per_step}"
            )
        if num_samples < (global_batch_size if drop_last else 1):
            raise DataError(
                f"the training split has {num_samples} samples, fewer than one global batch of "
                f"{global_batch_size}; build more data or lower the batch size"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = global_batch_size // per_step
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.shuffle = shuffle
        self.epoch = 0
        self.samples_into_epoch = 0
        self.consumed_samples = 0
        self._batch_at = global_batch_at
        self._step = first_step
        self._permutation_epoch = -1
        self._permutation = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch` (global sample indices, int64)."""
        if epoch != self._permutation_epoch:
            self._permutation = np.random.default_rng(self.seed + epoch).permutation(self.num_samples)
            self._permutation_epoch = epoch
        return self._permutation

    def state_dict(self) -> dict:
        """{"epoch", "consumed_samples" (all epochs, all ranks), "samples_into_epoch"}: JSON-able ints."""
        return {
            "epoch": self.epoch,
            "consumed_samples": self.consumed_samples,
            "samples_into_epoch": self.samples_into_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the step that produced `state`; raises ValueError on a bad state."""
        epoch, into, consumed = state["epoch"], state["samples_into_epoch"], state["consumed_samples"]
        if epoch < 0 or not 0 <= into <= self.num_samples or consumed < 0:
            raise ValueError(
                f"sampler state {state} does not fit a training split of {self.num_samples} samples"
            )
        self.epoch, self.samples_into_epoch, self.consumed_samples = int(epoch), int(into), int(consumed)

    def __iter__(self) -> Iterator[SamplerStep]:
        """Endless steps from the current state (epochs roll over); the state advances with each step."""
        while True:
            yield self.next_step()

    def next_step(self) -> SamplerStep:
        """Advance by one global batch and return it."""
        g = self.global_batch_size if self._batch_at is None else self._batch_at(self._step)
        self._step += 1
        if g % (self.micro_batch_size * self.world_size):
            raise ValueError(f"global batch {g} of step {self._step} is not whole micro-batches per rank")
        if self.samples_into_epoch + (g if self.drop_last else 1) > self.num_samples:
            self.epoch += 1
            self.samples_into_epoch = 0
        start = self.samples_into_epoch
        if self.shuffle:
            order = self.permutation(self.epoch)
            batch = order[start : start + g]
            if len(batch) < g:  # only without drop_last: fill up from the start of this epoch's order
                batch = np.concatenate([batch, np.resize(order, g - len(batch))])
        else:  # in order; without drop_last the last batch wraps to the epoch's start
            batch = np.arange(start, start + g, dtype=np.int64) % self.num_samples
        self.samples_into_epoch = min(start + g, self.num_samples)
        self.consumed_samples += g
        per_rank = g // self.world_size
        mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
        micro = [mine[i : i + self.micro_batch_size] for i in range(0, per_rank, self.micro_batch_size)]
        return SamplerStep(self.epoch, batch, micro, self.state_dict())
