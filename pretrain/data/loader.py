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
from pretrain.data.mixture import apportion
from pretrain.data.sampler import GlobalBatchSampler


@dataclass
class LoaderStep:
    """One optimizer step's data: the collated micro-batches of this rank plus their sample indices.

    `counts` is this rank's [non-pad tokens, masked tokens, pairs] of the step (float64, counted from the
    CPU batch so the device is never asked); `state_after` the loader state after this step (the
    sampler's, plus for a mixture `source_samples`: {name: samples drawn from it so far, all ranks}).
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
    yields LoaderSteps; `state_dict()` describes what the trainer has taken (not what was prefetched):
    the sampler's state, and for a mixture (pretrain/data/mixture.py) the samples drawn from each of its
    sources so far (`source_samples`, counted from the whole global batch, so every rank agrees).
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
        names = getattr(reader, "source_names", None)  # a mixture counts its draws per source
        self._source_samples = None if names is None else dict.fromkeys(names, 0)
        self._consumed_state = self._state(sampler.state_dict())
        self._error: BaseException | None = None

    def _state(self, sampler_state: dict) -> dict:
        if self._source_samples is None:
            return sampler_state
        return {**sampler_state, "source_samples": dict(self._source_samples)}

    def state_dict(self) -> dict:
        """The sampler state after the last step handed out (JSON-able)."""
        return dict(self._consumed_state)

    def load_state_dict(self, state: dict) -> None:
        """Resume after `state`; only before iteration started (raises RuntimeError otherwise)."""
        if self._thread is not None:
            raise RuntimeError("TrainLoader.load_state_dict must be called before iterating")
        self.sampler.load_state_dict(state)
        if self._source_samples is not None:  # a source new since the checkpoint starts at 0
            saved = state.get("source_samples", {})
            self._source_samples = {name: int(saved.get(name, 0)) for name in self._source_samples}
        self._consumed_state = self._state(self.sampler.state_dict())

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
                    self.collator.collate(self.reader.take(idx, s.epoch), idx, s.epoch)
                    for idx in s.micro_batches
                ]
                state_after = s.state_after
                if self._source_samples is not None:
                    drawn = self.reader.count_sources(s.global_batch, s.epoch)
                    for name, n in zip(self._source_samples, drawn, strict=True):
                        self._source_samples[name] += int(n)
                    state_after = self._state(s.state_after)
                counts = step_counts(batches)
                if self.pin_device is not None:
                    batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
                    counts = counts.pin_memory()
                step = LoaderStep(
                    s.epoch, s.global_batch, np.concatenate(s.micro_batches), batches, counts, state_after
                )
                if not self._put((step, state_after)):
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
    smaller than one global batch, the per-rank batch shrinks. A mixture's validation split is read
    source by source (`part_names`; `parts()` yields each batch with its source's index), the cap shared
    out by weight with at least one batch each, so evaluation reports every source and, over all of
    them, the mixture. Raises DataError if a split has fewer rows than ranks.
    """

    def __init__(
        self, reader, collator, batch_size: int, rank: int, world_size: int, max_batches: int | None
    ):
        """Plan the batches; raises DataError when a split cannot give every rank one sample."""
        self.collator = collator
        self.rank = rank
        self.world_size = world_size
        self.part_names: tuple[str, ...] = tuple(getattr(reader, "source_names", ()))
        if self.part_names:
            caps = (
                [None] * len(reader.parts)
                if max_batches is None
                else apportion(max_batches, reader.probabilities)
            )
            self._plans = [
                self._plan(part, batch_size, cap) for part, cap in zip(reader.parts, caps, strict=True)
            ]
        else:
            self._plans = [self._plan(reader, batch_size, max_batches)]
        self.num_batches = sum(num_batches for _, _, num_batches in self._plans)
        self.batch_size = self._plans[0][1]  # per rank (a mixture's: its first source's)

    def _plan(self, reader, batch_size: int, max_batches) -> tuple:
        """(reader, per-rank batch size, batches) of one split."""
        n = len(reader)
        if n < self.world_size:
            raise DataError(
                f"the validation split has {n} rows, fewer than the {self.world_size} ranks "
                f"({reader.name}); build the shards with a larger validation fraction"
            )
        batch = min(batch_size, n // self.world_size)
        per_global = batch * self.world_size
        return (
            reader,
            batch,
            n // per_global if max_batches is None else min(int(max_batches), n // per_global),
        )

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Yield this rank's collated batches."""
        for _, batch in self.parts():
            yield batch

    def parts(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Yield (source index, batch) of this rank's batches (index 0 for a single source)."""
        for part, (reader, size, num_batches) in enumerate(self._plans):
            per_global = size * self.world_size
            for b in range(num_batches):
                start = b * per_global + self.rank * size
                idx = np.arange(start, start + size, dtype=np.int64)
                yield part, self.collator.collate(reader.take(idx), idx, 0)
