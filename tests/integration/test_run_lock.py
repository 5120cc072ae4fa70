"""Two trainers on one run_dir (issue 20, item 5), through the real trainer (1 CPU process): while another
process holds the run dir's lock the trainer is refused in one line naming the holder; once that process is
SIGKILLed its lock is stale (a dead PID on this host) and the next run takes it over, trains and gives it
back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pretrain.checkpoint.run_lock import LOCK_FILE
from tests.helpers.runs import run_pretrain, worker_env, write_config

pytestmark = pytest.mark.integration

HOLD = (
    "import sys, time; from pretrain.checkpoint.run_lock import RunLock; "
    "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)


def test_a_second_run_is_refused_and_a_killed_holders_lock_taken_over(tiny_shards, tmp_path):
    config = write_config(
        tmp_path,
        tiny_shards,
        train={"max_steps": 1, "grad_accum_steps": 1},
        optim={"warmup_steps": 1},
        eval={"max_batches": 1},
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=worker_env()
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_pretrain(config, ranks=1)
        assert refused.returncode == 1
        errors = [line for line in refused.output.splitlines() if "error:" in line]
        assert len(errors) == 1, refused.output[-3000:]
        assert "is in use by another run" in errors[0] and f"PID {holder.pid}, since " in errors[0]
        assert not (run_dir / "checkpoints").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (run_dir / LOCK_FILE).exists()  # SIGKILL left it behind

    second = run_pretrain(config, ranks=1)
    assert second.returncode == 0, second.output[-3000:]
    assert "taking over the stale lock" in second.output and "its process is not alive" in second.output
    assert not (run_dir / LOCK_FILE).exists()  # given back at the end
