"""Run deterministic work units on a pool of worker processes with a bounded number in flight.

Each unit's result lives in a file the unit writes itself (see `build.py`), so the order in which units
finish does not matter and a rerun skips units whose file exists. At most `2 * workers` units are
submitted at a time, which bounds the parent's memory whatever the corpus size.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any


def threads_per_worker(workers: int) -> int:
    """Tokenizer (Rayon) threads each worker may use so that `workers` processes share the CPUs."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(threads: int, init: Callable[..., None] | None, init_args: tuple) -> None:
    # Set before the worker's first encode: Rayon reads it when it builds its global thread pool.
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    if init is not None:
        init(*init_args)


def run_units(
    fn: Callable[[Any], Any],
    units: Iterable[Any],
    *,
    workers: int,
    init: Callable[..., None] | None = None,
    init_args: tuple = (),
    start_method: str | None = None,
) -> Iterator[Any]:
    """Apply `fn` to every unit on `workers` processes; yield results as units finish (any order).

    With workers == 1 the units run in this process (after calling `init`). A worker's exception is
    re-raised here, after the pending units are cancelled. start_method: multiprocessing's (None: the
    platform default); "spawn" for a caller whose process may already run threads (torch, gloo), which a
    forked worker inherits mid-lock.
    """
    if workers <= 1:
        if init is not None:
            init(*init_args)
        for unit in units:
            yield fn(unit)
        return
    limit = 2 * workers
    pending: set[Future] = set()
    units = iter(units)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(start_method),
        initializer=_init_worker,
        initargs=(threads_per_worker(workers), init, init_args),
    ) as pool:
        try:
            while True:
                while len(pending) < limit:
                    unit = next(units, None)
                    if unit is None:
                        break
                    pending.add(pool.submit(fn, unit))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
