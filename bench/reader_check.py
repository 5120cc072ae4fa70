"""Benchmark: what the per-batch row check costs in `ShardReader.take` (the training loader calls it once
per micro-batch): the time of `take()` and, on the same batches, of `shards.row_problem` alone.

    mlm-data sample-corpus /tmp/bench/corpus
    mlm-data tokenizer --input /tmp/bench/corpus --kind wordpiece --vocab-size 30000 --out /tmp/bench/tok
    mlm-data build --input /tmp/bench/corpus --tokenizer /tmp/bench/tok --out /tmp/bench/shards --seq-len 128
    python bench/reader_check.py --shards /tmp/bench/shards
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit

import numpy as np

# Run as a script, bench/ is sys.path[0] and bench/data_pipeline.py would shadow the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from data_pipeline.shards.format import ShardReader, row_problem  # noqa: E402


def main() -> None:
    """Print, per batch size, the mean take() time and the share of it spent in row_problem."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    reader = ShardReader(args.shards)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        indices = [rng.integers(0, len(reader), batch) for _ in range(args.calls)]
        outputs = [reader.take(i) for i in indices[:100]]
        calls = iter(indices * 6)
        take = min(timeit.repeat(lambda calls=calls: reader.take(next(calls)), number=args.calls, repeat=5))
        take /= args.calls
        checks = iter(outputs * (6 * args.calls // 100 + 1))
        check = (
            min(
                timeit.repeat(
                    lambda checks=checks: row_problem(next(checks), reader.vocab_size, reader.seq_len),
                    number=args.calls,
                    repeat=5,
                )
            )
            / args.calls
        )
        print(
            f"seq_len {reader.seq_len}, batch {batch}: take() {take * 1e6:.1f} us, of which the row check "
            f"{check * 1e6:.1f} us ({100 * check / take:.1f}%)"
        )


if __name__ == "__main__":
    main()
