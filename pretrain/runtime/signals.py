"""Preemption: SIGTERM/SIGUSR1 set a local flag; all ranks agree on it at the same step, save once, exit 75.

The handler only sets a flag (no I/O, no collectives), so a second signal arriving during the save
cannot interrupt or corrupt it. `requested` is this rank's flag; the trainer agrees it with the other
ranks' at the end of each step (collectives.py) and hands the result to `agreed`, so every rank
stops after the same step even when only one rank was signalled.
"""

from __future__ import annotations

import logging
import signal

EXIT_PREEMPTED = 75
"""Exit code of `python -m pretrain` after a signal-triggered save (EX_TEMPFAIL): the launcher requeues."""

log = logging.getLogger(__name__)


class PreemptionHandler:
    """Installs handlers for `signals` (default SIGTERM and SIGUSR1) that record the first signal received.

    Use as a context manager or call `install()`/`uninstall()`; uninstall restores the previous handlers.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        """Remember which signals to catch; nothing is installed yet."""
        self.signals = signals
        self.received: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}
        self._announced = False

    def install(self) -> PreemptionHandler:
        """Install the handlers (main thread only, as Python requires); returns self."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were installed before `install()`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _on_signal(self, signum, _frame) -> None:
        # only set state: this runs between two bytecodes of whatever the process is doing (maybe a save)
        self.count += 1
        if self.received is None:
            self.received = signum

    @property
    def requested(self) -> bool:
        """Whether this process received a signal (local view, no communication)."""
        return self.received is not None

    def agreed(self, any_rank_requested: bool) -> bool:
        """Act on the ranks' agreement: returns `any_rank_requested` (every rank then saves and exits
        EXIT_PREEMPTED), logging once which signal it was."""
        if any_rank_requested and not self._announced:
            self._announced = True
            name = (
                signal.Signals(self.received).name
                if self.received is not None
                else "a signal on another rank"
            )
            log.warning("received %s: saving a checkpoint and exiting with %d", name, EXIT_PREEMPTED)
        return bool(any_rank_requested)
