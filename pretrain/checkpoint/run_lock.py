"""One trainer per run dir: RUN_DIR/.run.lock, held by rank 0 for the life of a run.

The lock is a file created with O_CREAT|O_EXCL (atomic on local disks and on NFS v3+/Lustre, where
flock may be a no-op or local to one client) holding the holder's host, PID, start time and
SLURM_JOB_ID. While the run lives, a daemon thread refreshes the file's mtime every
`HEARTBEAT_SECONDS` (the heartbeat). A second run on the same run dir is refused in one line naming the
holder. A lock left by a dead job is stale and taken over (logged) when any of these holds:

- it names this host and its PID is not alive (a SIGKILLed or crashed trainer);
- its heartbeat is older than `STALE_SECONDS` (a lost node: its holder can no longer refresh it);
- it names this job's SLURM_JOB_ID (a SLURM requeue: the job's previous run is gone).

The heartbeat compares the file's mtime (set by the file server on NFS) with this host's clock, so the
clocks must agree within minutes. The lock is removed at the end of the run and on errors, only if it is
still ours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime

from pretrain.errors import ConfigError

__all__ = ["HEARTBEAT_SECONDS", "LOCK_FILE", "STALE_SECONDS", "RunLock", "process_is_gone"]

log = logging.getLogger(__name__)
LOCK_FILE = ".run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # 20 missed heartbeats


def process_is_gone(host: str, pid: int) -> bool:
    """True when `host` is this host and no process `pid` lives here (False when alive or elsewhere)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _holder_line(path: str, holder: dict) -> str:
    return f"host {holder.get('host')!r}, PID {holder.get('pid')}, since {holder.get('started')}" + (
        f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    )


class RunLock:
    """The run dir's lock (see the module docstring); `acquire` takes it, `release` gives it back."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _content(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
            "token": self.token,
        }

    def _read(self, path: str) -> dict | None:
        """The holder recorded in `path`, {} when unreadable or not ours (a torn write), None if gone."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale_reason(self, holder: dict) -> str | None:
        """Why the lock `holder` may be taken over, or None while its holder may be alive."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return "gone"
        job = os.environ.get("SLURM_JOB_ID")
        pid = holder.get("pid")
        if (
            isinstance(pid, int)
            and isinstance(holder.get("host"), str)
            and process_is_gone(holder["host"], pid)
        ):
            return "its process is not alive"
        if age > STALE_SECONDS:
            return f"its heartbeat is {age:.0f} s old (stale after {STALE_SECONDS:.0f} s)"
        here = holder.get("host") == socket.gethostname()
        if job and holder.get("slurm_job_id") == job and not here:
            return f"it belongs to this SLURM job {job} (requeued)"
        return None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming its holder. A stale lock is taken over (logged)."""
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read(self.path)
                if holder is None:
                    continue  # released meanwhile
                reason = self._stale_reason(holder)
                if reason is None:
                    raise ConfigError(
                        f"run_dir {os.path.dirname(self.path)} is in use by another run "
                        f"({_holder_line(self.path, holder)}; lock {self.path}); wait for it to end, "
                        f"choose another run_dir, or delete {self.path} if that run is surely gone"
                    ) from None
                self._take_over(holder, reason)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._content(), f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise ConfigError(f"could not take the run_dir lock {self.path}; another run keeps taking it")

    def _take_over(self, holder: dict, reason: str) -> None:
        """Move the stale lock aside (rename: one of several racing takers wins) and drop it."""
        aside = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._read(aside) != holder:  # another taker replaced it meanwhile: put its lock back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        else:
            log.warning(
                "taking over the stale lock %s (%s): %s", self.path, _holder_line(self.path, holder), reason
            )
        with contextlib.suppress(OSError):
            os.remove(aside)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError as e:
                log.warning("cannot refresh the run_dir lock %s: %s", self.path, e)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        holder = self._read(self.path)
        if holder and holder.get("token") == self.token:
            with contextlib.suppress(OSError):
                os.remove(self.path)
