"""A weighted mixture of row sources: which row of which source fills each global sample.

Global sample `v` of epoch `e` sits at stream position `P = e * len(mixture) + v`. The sources take turns
in a fixed interleaving of `period` slots (a function of the weights only): source `s` holds
`quota[s]` slots of every period, spread evenly through it, so any run of consecutive samples (a global
batch, one rank's share of it) holds each source's share to within a sample or two. The slot of `P` is
the `k`-th draw of its source (`k = (P // period) * quota[s] + rank of the slot among s's slots`); that
draw is row `perm(seed, s, k // n_s)[k % n_s]` of the source's `n_s` rows: each source walks through its
own shuffled passes (epochs of that source), so a small source repeats rather than running dry, and a
big one is never re-read before all its rows were. Everything is a pure function of (seed, epoch,
index) and the weights: no state to checkpoint, the same rows on any world size. The sampler visits a
mixture's samples in order (`GlobalBatchSampler(shuffle=False)`): the rows are shuffled here, per source.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.shards import ShardReader

# The interleaving's length: enough slots that the smallest weight gets about 64 (its share within
# ~1.5%), between 4 Ki and 4 Mi slots (a 4 Mi table is ~50 MB and ~0.5 s to build, once per run).
MIN_PERIOD, MAX_PERIOD, SLOTS_OF_SMALLEST = 1 << 12, 1 << 22, 64
# Shuffled passes kept per source: the loader reads forwards, so the current and the next pass suffice;
# a tiny source (fewer rows than a batch draws from it) keeps more, bounded by this many rows in all.
_CACHED_PASSES, _CACHED_ROWS = 2, 1 << 22


def source_probabilities(weights: Sequence[float | None], sizes: Sequence[int], temperature: float):
    """The sampling probability of each source (float64, sums to 1): the given `weights` normalised, or,
    when every weight is None, p ~ size^(1/temperature)."""
    if all(w is None for w in weights):
        raw = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    else:
        raw = np.asarray(weights, dtype=np.float64)
    return raw / raw.sum()


def apportion(total: int, probabilities: np.ndarray, minimum: int = 1) -> np.ndarray:
    """`total` split into integer shares by `probabilities` (largest remainders), every share at least
    `minimum` (taken from the largest shares); int64, sums to `total`."""
    exact = np.asarray(probabilities, dtype=np.float64) * total
    shares = np.maximum(np.floor(exact).astype(np.int64), minimum)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    short = total - int(shares.sum())
    for i in range(abs(short)):  # at most one pass over the sources
        if short > 0:
            shares[order[i % len(order)]] += 1
        else:
            shares[int(np.argmax(shares))] -= 1
    return shares


def interleaving(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source of each slot, rank of each slot among its source's slots, slots per source) of one period.

    Source s's j-th slot is placed at (j + 0.5) / quota[s] of the period (ties by source order), so its
    slots are evenly spread; the period's length follows from the smallest probability.
    """
    smallest = float(np.min(probabilities))
    period = int(np.clip(1 << int(np.ceil(np.log2(SLOTS_OF_SMALLEST / smallest))), MIN_PERIOD, MAX_PERIOD))
    quota = apportion(period, probabilities)
    source = np.repeat(np.arange(len(quota), dtype=np.int16), quota)
    rank = np.concatenate([np.arange(q, dtype=np.int64) for q in quota])
    order = np.argsort((rank + 0.5) / quota[source], kind="stable")
    return source[order], rank[order], quota


def check_compatible(parts: Sequence[tuple[str, object]]) -> None:
    """Raise DataError naming the first pair of sources whose rows cannot be trained together: another
    tokenizer (fingerprint, vocabulary size or special ids), another row length, one with sentence
    pairs and one without, or one that records document starts and one that does not (rebuild the
    older one)."""
    first_name, first = parts[0]
    for name, source in parts[1:]:
        for what, a, b in (
            ("tokenizer (fingerprint)", first.tokenizer_fingerprint[:12], source.tokenizer_fingerprint[:12]),
            ("vocabulary size", first.vocab_size, source.vocab_size),
            ("special token ids", first.special_ids, source.special_ids),
            ("row length (seq_len)", first.seq_len, source.seq_len),
            ("sentence pairs (nsp/sop vs full-sentences)", first.has_pairs, source.has_pairs),
            (
                "document starts (doc_start, shards of format 2)",
                first.has_document_starts,
                source.has_document_starts,
            ),
        ):
            if a != b:
                raise DataError(
                    f"data.sources {first_name!r} ({first.name}) and {name!r} ({source.name}) differ in "
                    f"{what}: {a} vs {b}; every source of a mixture must be built with the same tokenizer, "
                    "--seq-len and --mode, by the same mlm-data version"
                )


class MixtureSource:
    """A row source (pretrain/data/row_source.py) drawing from named row sources by probability.

    Takes [(name, source), ...], the probabilities (summing to 1) and the seed. Besides the RowSource
    members it has `source_names`, `parts` (the sources, in order), `probabilities`, `weights` (the
    [[name, probability], ...] of the run identity), `count_sources(indices, epoch)` and
    `source_epochs(samples)`. Raises DataError when the sources cannot be trained together
    (`check_compatible`).
    """

    def __init__(self, parts: Sequence[tuple[str, object]], probabilities, *, seed: int) -> None:
        """Check the sources; the interleaving is built on the first draw."""
        check_compatible(parts)
        self.source_names = tuple(name for name, _ in parts)
        self.parts = [source for _, source in parts]
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.weights = [
            [name, float(p)] for name, p in zip(self.source_names, self.probabilities, strict=True)
        ]
        first = self.parts[0]
        self.seq_len, self.has_pairs = first.seq_len, first.has_pairs
        self.has_document_starts = first.has_document_starts
        self.vocab_size, self.special_ids = first.vocab_size, first.special_ids
        self.tokenizer_fingerprint, self.tokenizer_dir = first.tokenizer_fingerprint, first.tokenizer_dir
        self.name = "the mixture of " + ", ".join(f"{n} ({s.name})" for n, s in parts)
        self.seed = seed
        self.sizes = np.array([len(s) for s in self.parts], dtype=np.int64)
        self._len = int(self.sizes.sum())
        self._first_rows = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        # Shard sets are read through one reader over all of them: one take per micro-batch, not one
        # per source (each take has a fixed cost, and a micro-batch of a 20-source mixture touches all).
        shard_sets = all(isinstance(s, ShardReader) for s in self.parts)
        self._joined = ShardReader.concatenate(self.parts, self.name) if shard_sets else None
        self._table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._passes: list[dict[int, np.ndarray]] = [{} for _ in self.parts]

    def __len__(self) -> int:
        return self._len

    def data_identity(self) -> str:
        """Hex sha256 of the sources' build identities, in order."""
        return _digest([s.data_identity() for s in self.parts])

    def content_identity(self) -> str:
        """Hex sha256 of the sources' content identities, in order."""
        return _digest([s.content_identity() for s in self.parts])

    def locate(self, indices, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, row in that source) of the mixture's samples `indices` in `epoch` (int64)."""
        source_of, rank_of, quota = self._interleaving()
        position = np.asarray(indices, dtype=np.int64).reshape(-1) + int(epoch) * self._len
        cycle, slot = np.divmod(position, len(source_of))
        sources = source_of[slot].astype(np.int64)
        draw = cycle * quota[sources] + rank_of[slot]
        passes, offsets = np.divmod(draw, self.sizes[sources])
        rows = np.empty_like(offsets)
        # the samples grouped by source with one sort (np.unique, or a mask per source, cost 10x more)
        by_source = np.argsort(sources, kind="stable")
        counts = np.bincount(sources)
        ends = np.cumsum(counts)
        for s in np.flatnonzero(counts):
            mine = by_source[ends[s] - counts[s] : ends[s]]
            mine_passes = passes[mine]
            first, last = int(mine_passes.min()), int(mine_passes.max())
            if first == last:
                rows[mine] = self._pass(int(s), first)[offsets[mine]]
                continue
            for p in range(first, last + 1):  # draws are consecutive: their passes too
                where = mine[mine_passes == p]
                rows[where] = self._pass(int(s), p)[offsets[where]]
        return sources, rows

    def count_sources(self, indices, epoch: int) -> np.ndarray:
        """How many of the samples `indices` of `epoch` each source fills (int64, in source order)."""
        source_of, _, _ = self._interleaving()
        position = np.asarray(indices, dtype=np.int64).reshape(-1) + int(epoch) * self._len
        return np.bincount(source_of[position % len(source_of)], minlength=len(self.parts))

    def source_epochs(self, samples: dict[str, int]) -> dict[str, float]:
        """{name: passes through that source} of `samples` drawn ({name: count}, `source_samples`)."""
        return {
            n: samples.get(n, 0) / max(int(size), 1)
            for n, size in zip(self.source_names, self.sizes, strict=True)
        }

    def take(self, indices, epoch: int = 0) -> dict[str, np.ndarray]:
        """The rows of the mixture's samples `indices` in `epoch`, stacked in order. Raises what the
        sources' `take` raises (DataError naming the shard file and row)."""
        sources, rows = self.locate(indices, epoch)
        if self._joined is not None:
            return self._joined.take(self._first_rows[sources] + rows)
        out: dict[str, np.ndarray] = {}
        for s in np.flatnonzero(np.bincount(sources)):
            where = np.flatnonzero(sources == s)
            part = self.parts[int(s)].take(rows[where])
            for key, values in part.items():
                if key not in out:
                    out[key] = np.empty((len(sources), *values.shape[1:]), values.dtype)
                out[key][where] = values
        return out

    def _interleaving(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._table is None:
            empty = [n for n, size in zip(self.source_names, self.sizes, strict=True) if size == 0]
            if empty:
                raise DataError(
                    f"data.sources {empty[0]!r} has no rows in this split; rebuild it or leave it out"
                )
            self._table = interleaving(self.probabilities)
        return self._table

    def _pass(self, source: int, number: int) -> np.ndarray:
        """The row order of pass `number` through source `source`: a permutation keyed by (seed, the
        source's name, pass), so a source keeps its order when others are added or reweighted."""
        cache = self._passes[source]
        if number not in cache:
            key = [self.seed, zlib.crc32(self.source_names[source].encode()), number]
            cache[number] = np.random.default_rng(key).permutation(int(self.sizes[source]))
            keep = max(_CACHED_PASSES, _CACHED_ROWS // int(self.sizes[source]))
            for old in sorted(cache)[:-keep]:
                del cache[old]
        return cache[number]


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(values, separators=(",", ":")).encode()).hexdigest()


def open_mixture(data_cfg, *, seed: int) -> tuple[MixtureSource, MixtureSource]:
    """(train mixture, validation mixture) of `data_cfg.sources` with the seed `seed` (train.seed).

    The weights come from the config (or the training splits' sizes and data.temperature) and are the
    same for both splits. Raises DataError naming the file for a missing or damaged manifest or shard,
    a source without training rows, or sources that cannot be trained together.
    """
    train = [(s.name, ShardReader(s.path, split="train")) for s in data_cfg.sources]
    for name, reader in train:
        if len(reader) == 0:
            raise DataError(f"data.sources {name!r} ({reader.name}) has no training rows; rebuild it")
    validation = [(s.name, ShardReader(s.path, split="validation")) for s in data_cfg.sources]
    sizes = [len(reader) for _, reader in train]
    p = source_probabilities([s.weight for s in data_cfg.sources], sizes, data_cfg.temperature)
    return MixtureSource(train, p, seed=seed), MixtureSource(validation, p, seed=seed)
