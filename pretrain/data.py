"""Sample order and batching: resumable global-batch sampler, prefetching train loader, validation loader.

The order is a pure function of (seed, epoch, position): epoch e visits the permutation
`numpy.random.default_rng(seed + e).permutation(num_samples)` (PCG64), a global batch is the next
`global_batch_size` positions of it and rank r of W takes the r-th contiguous slice. Resuming with
another world size but the same global batch size therefore sees the same global batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.errors import DataError
from pretrain.config import ConfigError, DataConfig


def resolve_seq_len(data_cfg: DataConfig, *, shards_seq_len: int, shards_dir: str, max_positions: int) -> int:
    """The sequence length to train on: data.seq_len, or the shards' when unset.

    Raises ConfigError naming the shards dir when data.seq_len exceeds the shards' seq_len, or when
    the length exceeds the model's position table (`max_positions`, model.max_position_embeddings).
    """
    seq_len = shards_seq_len if data_cfg.seq_len is None else data_cfg.seq_len
    if seq_len > shards_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} but the shards in {shards_dir} hold rows of {shards_seq_len} tokens; "
            f"lower data.seq_len or rebuild the shards with --seq-len {seq_len}"
        )
    if seq_len > max_positions:
        raise ConfigError(
            f"sequence length {seq_len} (shards in {shards_dir}) exceeds model.max_position_embeddings="
            f"{max_positions}; raise it or train on shorter rows (data.seq_len)"
        )
    return seq_len


@dataclass
class SamplerStep:
    """One optimizer step's samples: the epoch, the whole global batch (global sample indices), this
    rank's micro-batches (arrays of global sample indices) and the sampler state after this step."""

    epoch: int
    global_batch: np.ndarray
    micro_batches: list[np.ndarray]
    state_after: dict


@dataclass
class LoaderStep:
    """One optimizer step's data: the collated micro-batches of this rank plus their sample indices.

    `counts` is this rank's [non-pad tokens, masked tokens, pairs] of the step (float64, counted from the
    CPU batch so the device is never asked); `state_after` the sampler state after this step.
    """

    epoch: int
    global_batch: np.ndarray
    rank_indices: np.ndarray
    micro_batches: list[dict[str, torch.Tensor]]
    counts: torch.Tensor
    state_after: dict


def step_counts(micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[non-pad tokens, masked tokens, pairs] of collated CPU micro-batches, as a float64 tensor."""
    tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
    masked = sum(b["masked_labels"].numel() for b in micro_batches)
    pairs = sum(b["pair_labels"].numel() for b in micro_batches if "pair_labels" in b)
    return torch.tensor([tokens, masked, pairs], dtype=torch.float64)


class GlobalBatchSampler:
    """Yields, per optimizer step, this rank's micro-batches of global sample indices; resumable exactly.

    Takes the number of training samples, the global batch size G (must be a multiple of micro batch x
    world size; grad_accum_steps = G / (micro x world)), the seed, this rank and the world size. With
    drop_last (the default) an epoch ends before a batch would run past it; otherwise the last batch is
    filled up from the start of the same epoch's permutation. Raises ValueError on inconsistent sizes
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
    ) -> None:
        """Validate sizes and start at epoch 0, position 0."""
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
        self.epoch = 0
        self.samples_into_epoch = 0
        self.consumed_samples = 0
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
        g = self.global_batch_size
        if self.samples_into_epoch + (g if self.drop_last else 1) > self.num_samples:
            self.epoch += 1
            self.samples_into_epoch = 0
        order = self.permutation(self.epoch)
        start = self.samples_into_epoch
        batch = order[start : start + g]
        if len(batch) < g:  # only without drop_last: fill up from the start of this epoch's order
            batch = np.concatenate([batch, np.resize(order, g - len(batch))])
        self.samples_into_epoch = min(start + g, self.num_samples)
        self.consumed_samples += g
        per_rank = g // self.world_size
        mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
        micro = [mine[i : i + self.micro_batch_size] for i in range(0, per_rank, self.micro_batch_size)]
        return SamplerStep(self.epoch, batch, micro, self.state_dict())


class TrainLoader:
    """Reads and masks the sampler's micro-batches in a background thread, `prefetch_batches` steps ahead.

    Takes a `data_pipeline.shards.ShardReader`, a GlobalBatchSampler, a MaskingCollator, the number of
    steps to prepare ahead and optionally the CUDA device to pin the tensors for (`pin_device`, e.g.
    'cuda:3': only where CUDA is present, so the trainer's `.to(device, non_blocking=True)` copies overlap
    with compute; the thread selects that device first, as torch's DataLoader does, so pinning creates
    no context on GPU 0). Iterating
    yields LoaderSteps; `state_dict()` describes what the trainer has taken (not what was prefetched).
    Errors in the thread are re-raised in the consumer. Call `close()` (or use `with`) to stop the thread.
    """

    def __init__(
        self,
        reader,
        sampler: GlobalBatchSampler,
        collator,
        prefetch_batches: int = 2,
        pin_device: str | torch.device | None = None,
    ) -> None:
        """Set up; the thread starts on the first `next()`."""
        self.reader = reader
        self.sampler = sampler
        self.collator = collator
        self.pin_device = None if pin_device is None else torch.device(pin_device)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch_batches))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumed_state = sampler.state_dict()
        self._error: BaseException | None = None

    def state_dict(self) -> dict:
        """The sampler state after the last step handed out (JSON-able)."""
        return dict(self._consumed_state)

    def load_state_dict(self, state: dict) -> None:
        """Resume after `state`; only before iteration started (raises RuntimeError otherwise)."""
        if self._thread is not None:
            raise RuntimeError("TrainLoader.load_state_dict must be called before iterating")
        self.sampler.load_state_dict(state)
        self._consumed_state = self.sampler.state_dict()

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> LoaderStep:
        """The next step's data (blocks until the thread has it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="train-loader", daemon=True)
            self._thread.start()
        if self._error is not None:  # the thread has ended; keep failing instead of blocking forever
            raise self._error
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._error = item
            raise item
        step, state_after = item
        self._consumed_state = state_after
        return step

    def _produce(self) -> None:
        try:
            if self.pin_device is not None:
                torch.cuda.set_device(self.pin_device)
            for s in self.sampler:
                batches = [
                    self.collator.collate(self.reader.take(idx), idx, s.epoch) for idx in s.micro_batches
                ]
                counts = step_counts(batches)
                if self.pin_device is not None:
                    batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
                    counts = counts.pin_memory()
                step = LoaderStep(
                    s.epoch, s.global_batch, np.concatenate(s.micro_batches), batches, counts, s.state_after
                )
                if not self._put((step, s.state_after)):
                    return
        except BaseException as exc:  # hand any failure to the consumer instead of dying silently
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the prefetch thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ValidationLoader:
    """Deterministic micro-batches over the validation split: the same samples and masks every evaluation.

    Takes a ShardReader over the validation split, a MaskingCollator (masks use epoch 0), the per-rank
    batch size, this rank, the world size and an optional cap on batches per rank. Every rank gets the
    same number of batches (ZeRO-3 forwards need all ranks): global batches of batch x world consecutive
    samples, rank r taking the r-th slice; a remainder smaller than that is left out. If the split is
    smaller than one global batch, the per-rank batch shrinks. Raises DataError if it has fewer rows
    than ranks.
    """

    def __init__(
        self, reader, collator, batch_size: int, rank: int, world_size: int, max_batches: int | None
    ):
        """Plan the batches; raises ValueError when the split cannot give every rank one sample."""
        n = len(reader)
        if n < world_size:
            raise DataError(
                f"the validation split has {n} rows, fewer than the {world_size} ranks; "
                "build the shards with a larger validation fraction"
            )
        self.reader = reader
        self.collator = collator
        self.batch_size = min(batch_size, n // world_size)
        self.rank = rank
        self.world_size = world_size
        per_global = self.batch_size * world_size
        self.num_batches = n // per_global if max_batches is None else min(max_batches, n // per_global)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Yield this rank's collated batches."""
        per_global = self.batch_size * self.world_size
        for b in range(self.num_batches):
            start = b * per_global + self.rank * self.batch_size
            idx = np.arange(start, start + self.batch_size, dtype=np.int64)
            yield self.collator.collate(self.reader.take(idx), idx, 0)
