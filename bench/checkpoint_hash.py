"""Benchmark: hashing a checkpoint's files for COMPLETE.json (`data_pipeline.integrity.files_sha256`).

Writes a directory shaped like a ZeRO checkpoint of --gb gigabytes (one model-states file of a quarter
of it, the rest split over --ranks optimizer partitions, plus small RNG files), then times hashing every
file with 1 thread and with each --threads count, best of --repeats. The files are read from the page
cache, as right after a save. Prints one JSON line per thread count.

    python bench/checkpoint_hash.py --gb 4.7 --ranks 2 --threads 2 8 --work /tmp/ckpt-hash
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

# bench/data_pipeline.py is named like the package: keep bench/ off the import path.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

from data_pipeline.integrity import files_sha256  # noqa: E402

_BLOCK = 1 << 26  # 64 MiB of random bytes, written repeatedly: incompressible, cheap to make


def make_checkpoint(work: str, total_bytes: int, ranks: int) -> list[str]:
    """Files of a fake checkpoint under `work` summing to about `total_bytes`; returns their paths."""
    os.makedirs(work, exist_ok=True)
    sizes = {"mp_rank_00_model_states.pt": total_bytes // 4}
    for rank in range(ranks):
        sizes[f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"] = (total_bytes - total_bytes // 4) // ranks
        sizes[f"rng/rank-{rank:05d}.pt"] = 20_000
    block, paths = os.urandom(_BLOCK), []
    for name, size in sizes.items():
        path = os.path.join(work, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for start in range(0, size, _BLOCK):
                f.write(block[: min(_BLOCK, size - start)])
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=4.7, help="checkpoint size (BERT-large ZeRO: 4.7)")
    p.add_argument("--ranks", type=int, default=2, help="optimizer partitions")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 8])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work", required=True, help="scratch dir (removed at the end)")
    args = p.parse_args(argv)
    paths = make_checkpoint(args.work, int(args.gb * 1e9), args.ranks)
    total = sum(os.path.getsize(path) for path in paths)
    try:
        reference = None
        for threads in [1, *args.threads]:
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                digests = files_sha256(paths, threads=threads)
                best = min(best, time.perf_counter() - started)
            reference = reference or digests
            if digests != reference:
                raise SystemExit(f"{threads} threads gave other digests than 1 thread")
            gb = total / 1e9
            row = {"threads": threads, "files": len(paths), "gb": round(gb, 2), "seconds": round(best, 2)}
            print(json.dumps({**row, "gb_per_s": round(gb / best, 2)}), flush=True)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
