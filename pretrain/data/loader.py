"""Batching: the prefetching train loader (the sampler's micro-batches, read and masked in a thread) and
the deterministic validation loader. The sample order itself is pretrain/data/sampler.py."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.errors import DataError
from pretrain.data.sampler import GlobalBatchSampler


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


def _non_pad_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens in use in a collated CPU batch, from whichever key the model took that tells: the padding
    mask, the unpadded token indices, or the document ids (0 on padding); a batch with none of them has
    no padding (the collator leaves attention_mask out then)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "unpad_indices" in batch:
        return batch["unpad_indices"].numel()
    if "document_ids" in batch:
        return int((batch["document_ids"] != 0).sum())
    return batch["input_ids"].numel()


def step_counts(micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """[non-pad tokens, masked tokens, pairs] of collated CPU micro-batches, as a float64 tensor."""
    tokens = sum(_non_pad_tokens(b) for b in micro_batches)
    masked = sum(b["masked_labels"].numel() for b in micro_batches)
    pairs = sum(b["pair_labels"].numel() for b in micro_batches if "pair_labels" in b)
    return torch.tensor([tokens, masked, pairs], dtype=torch.float64)


class TrainLoader:
    """Reads and masks the sampler's micro-batches in a background thread, `prefetch_batches` steps ahead.

    Takes a row source (pretrain/data/row_source.py), a GlobalBatchSampler, a MaskingCollator, the number of
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

    Takes a row source over the validation split, a MaskingCollator (masks use epoch 0), the per-rank
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
