"""Benchmark: what a mixture (data.sources) costs the loader, with 2 and 20 sources.

1. The draw alone (no shards): `MixtureSource.count_sources` + `locate` of one global batch, on sources
   of 10M rows in all (sizes log-uniform, weights from sizes at temperature 3, as a multilingual mix),
   against the plain sampler's step over one shard set of the same size; plus the one-off start-up (the
   interleaving table) and a pass's permutations, which the loader thread pays once per pass.
2. The whole loader (`TrainLoader`: draw, `take`, masking) on real shards, one shard set vs a mixture of 2
   and 20 sources (the same shards opened under 2 or 20 names), in samples/s, and that rate over what one
   H100 consumes at the BERT-base target (740,000 tokens/s at seq 128, docs/training.md).

    mlm-data sample-corpus /tmp/bench/corpus
    mlm-data tokenizer --input /tmp/bench/corpus --kind wordpiece --vocab-size 30000 --out /tmp/bench/tok
    mlm-data build --input /tmp/bench/corpus --tokenizer /tmp/bench/tok --out /tmp/bench/shards --seq-len 128
    python bench/mixture.py --shards /tmp/bench/shards
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# Run as a script, bench/ is sys.path[0] and bench/data_pipeline.py would shadow the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from data_pipeline.shards.format import ShardReader  # noqa: E402
from pretrain.config import MaskingConfig  # noqa: E402
from pretrain.data.loader import TrainLoader  # noqa: E402
from pretrain.data.masking import MaskingCollator  # noqa: E402
from pretrain.data.mixture import MixtureSource, source_probabilities  # noqa: E402
from pretrain.data.sampler import GlobalBatchSampler  # noqa: E402

GPU_TOKENS_PER_S = 740_000  # BERT-base seq 128 bf16 on one H100: the issue 8 target (docs/training.md)


class SizedSource:
    """A row source of `n` rows that is only drawn from (part 1 never reads rows)."""

    def __init__(self, n: int) -> None:
        self.n, self.name = n, f"{n} rows"
        self.seq_len, self.has_pairs, self.has_document_starts, self.vocab_size = 128, False, False, 30000
        self.special_ids = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
        self.tokenizer_fingerprint, self.tokenizer_dir = "0" * 64, ""

    def __len__(self) -> int:
        return self.n


def best_of(fn, repeat: int = 5) -> float:
    """The fastest of `repeat` timings of `fn()`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def batch_sampler(rows: int, global_batch: int, micro: int | None = None, shuffle: bool = True):
    """The one-rank sampler of global batches of `global_batch` (micro-batches of `micro`, default the whole
    batch) over `rows` rows, seed 0."""
    return GlobalBatchSampler(
        rows,
        global_batch_size=global_batch,
        micro_batch_size=micro or global_batch,
        seed=0,
        rank=0,
        world_size=1,
        shuffle=shuffle,
    )


def draw_cost(num_sources: int, global_batch: int, total_rows: int, steps: int) -> None:
    """Part 1: print us per global batch of the mixture's draw and of the plain sampler's step."""
    raw = np.exp(np.random.default_rng(0).uniform(0, np.log(1000), num_sources))  # up to 1000x apart
    sizes = np.maximum(raw / raw.sum() * total_rows, 1000).astype(np.int64)
    parts = [(f"s{i}", SizedSource(int(n))) for i, n in enumerate(sizes)]
    p = source_probabilities([None] * num_sources, sizes, 3.0)
    start = time.perf_counter()
    mixture = MixtureSource(parts, p, seed=0)
    mixture.count_sources(np.arange(1), 0)
    table = time.perf_counter() - start
    sampler = batch_sampler(len(mixture), global_batch, shuffle=False)
    batches = [sampler.next_step() for _ in range(steps)]
    start = time.perf_counter()
    mixture.locate(batches[0].global_batch, 0)  # the first pass of every source it touches
    first = time.perf_counter() - start

    def draw() -> None:
        for b in batches:
            mixture.count_sources(b.global_batch, b.epoch)
            mixture.locate(b.global_batch, b.epoch)

    per_batch = best_of(draw) / steps
    plain = batch_sampler(len(mixture), global_batch)
    plain.next_step()  # its epoch permutation, once per epoch
    per_step = best_of(lambda: [plain.next_step() for _ in range(steps)]) / steps
    print(
        f"{num_sources:2d} sources ({total_rows / 1e6:.0f}M rows, smallest p {p.min():.2g}): draw of a "
        f"global batch of {global_batch}: {per_batch * 1e6:.0f} us (plain sampler step "
        f"{per_step * 1e6:.0f} us); once per run: interleaving table {table * 1e3:.0f} ms, "
        f"first passes {first * 1e3:.0f} ms"
    )


def loader_rate(source, steps: int, global_batch: int, micro: int, shuffle: bool) -> float:
    """Part 2: samples/s the loader thread produces (draw, take, masking) over `steps` steps."""
    sampler = batch_sampler(len(source), global_batch, micro, shuffle)
    collator = MaskingCollator(
        MaskingConfig(), special_ids=source.special_ids, vocab_size=source.vocab_size, seed=0
    )
    with TrainLoader(source, sampler, collator, prefetch_batches=steps + 1) as loader:
        next(loader)  # start-up: the thread, a first permutation
        start = time.perf_counter()
        for _ in range(steps):
            next(loader)
        return steps * global_batch / (time.perf_counter() - start)


def main() -> None:
    """Print part 1 for 2 and 20 sources, then part 2 when --shards is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="a shards dir (seq 128) for the loader part")
    parser.add_argument("--global-batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    for n in (2, 20):
        draw_cost(n, args.global_batch, 10_000_000, args.steps)
    if not args.shards:
        return
    reader = ShardReader(args.shards)
    need = GPU_TOKENS_PER_S / reader.seq_len
    loader_batch = 1024
    rates = {"1 shard set": loader_rate(reader, args.steps, loader_batch, 32, True)}
    for n in (2, 20):
        parts = [(f"s{i}", ShardReader(args.shards)) for i in range(n)]
        mixture = MixtureSource(parts, [1 / n] * n, seed=0)
        rates[f"{n} sources"] = loader_rate(mixture, args.steps, loader_batch, 32, False)
    for name, rate in rates.items():
        print(
            f"loader, {name}: {rate:,.0f} samples/s of seq {reader.seq_len} = {rate / need:.1f}x one H100 at "
            f"{GPU_TOKENS_PER_S:,} tokens/s ({need:,.0f} samples/s)"
        )


if __name__ == "__main__":
    main()
