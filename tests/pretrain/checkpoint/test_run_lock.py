"""The run dir's lock (pretrain/checkpoint/run_lock.py, issue 20 item 5): a live holder refuses a second run
naming itself; a lock of a dead PID on this host, one whose heartbeat stopped, and one of this SLURM job
(a requeue) are taken over; release removes only our own lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pretrain.checkpoint import run_lock
from pretrain.checkpoint.run_lock import LOCK_FILE, RunLock
from pretrain.errors import ConfigError


def _plant(run_dir, *, host: str, pid: int, age: float = 0.0, job: str | None = None) -> str:
    path = os.path.join(run_dir, LOCK_FILE)
    holder = {"host": host, "pid": pid, "started": "2024-01-01T00:00:00+00:00", "slurm_job_id": job}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**holder, "token": "theirs"}, f)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_named_and_a_second_lock_refused(tmp_path):
    first = RunLock(str(tmp_path))
    first.acquire()
    try:
        with pytest.raises(ConfigError) as refused:
            RunLock(str(tmp_path)).acquire()
        line = str(refused.value)
        assert "\n" not in line and "in use by another run" in line
        assert f"host {socket.gethostname()!r}, PID {os.getpid()}, since 20" in line
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    again = RunLock(str(tmp_path))
    again.acquire()  # released: free again
    again.release()


def test_stale_locks_are_taken_over(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    # a dead PID on this host (SIGKILL, crash)
    _plant(tmp_path, host=socket.gethostname(), pid=_dead_pid())
    lock = RunLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "its process is not alive" in caplog.text
    lock.release()

    # another host, heartbeat fresh: refused; heartbeat older than STALE_SECONDS (a lost node): taken over
    _plant(tmp_path, host="node-that-is-gone", pid=1, age=10)
    with pytest.raises(ConfigError, match="host 'node-that-is-gone', PID 1"):
        RunLock(str(tmp_path)).acquire()
    _plant(tmp_path, host="node-that-is-gone", pid=1, age=run_lock.STALE_SECONDS + 5)
    lock = RunLock(str(tmp_path))
    lock.acquire()
    assert "heartbeat is" in caplog.text
    lock.release()

    # a SLURM requeue: the same job id, on another node
    _plant(tmp_path, host="other-node", pid=1, job="4242")
    with pytest.raises(ConfigError, match="SLURM job 4242"):
        RunLock(str(tmp_path)).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    lock = RunLock(str(tmp_path))
    lock.acquire()
    assert "requeued" in caplog.text
    lock.release()


def test_release_leaves_a_lock_that_is_not_ours_and_the_heartbeat_refreshes(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
    lock = RunLock(str(tmp_path))
    lock.acquire()
    path = tmp_path / LOCK_FILE
    os.utime(path, (time.time() - 100, time.time() - 100))
    deadline = time.time() + 5
    while time.time() - path.stat().st_mtime > 50 and time.time() < deadline:
        time.sleep(0.05)
    assert time.time() - path.stat().st_mtime < 50  # the heartbeat touched it
    _plant(tmp_path, host="elsewhere", pid=1)  # someone took it over meanwhile
    lock.release()
    assert json.loads(path.read_text())["host"] == "elsewhere"
