"""A trainer run in the background: started in its own session, waited on, SIGKILLed with all its ranks;
`sigkill_then_resume` is the kill-and-resume every exact-resume test runs."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.helpers.runs import PretrainRun, run_pretrain, trainer_command, worker_env


def start(config: Path, overrides=(), ranks: int = 2, env: dict | None = None) -> subprocess.Popen:
    """Start the trainer (torchrun with `ranks` workers) in its own process group, so a kill reaches
    every rank; its output goes to output.log beside the config (a pipe could fill up and stall it)."""
    cmd, env = trainer_command(ranks), worker_env(env)
    log = open(config.parent / "output.log", "w")  # noqa: SIM115 - the child keeps it; closed on exit
    proc = subprocess.Popen(
        [*cmd, "--config", str(config), *overrides],
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()
    proc.log_path = config.parent / "output.log"
    return proc


def output_of(proc: subprocess.Popen) -> str:
    """What a `start`ed run has written to its output.log so far."""
    return proc.log_path.read_text()


def wait_until(proc: subprocess.Popen, condition, timeout: float = 240, poll: float = 0.001) -> None:
    """Poll `condition()` until true; raises AssertionError if the run ends first or after `timeout` s
    (then it kills the run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) first:\n{output_of(proc)[-3000:]}")
        if time.monotonic() > deadline:
            kill_all(proc)
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def reached_step(run_dir: Path, step: int):
    """A condition for `wait_until`: run_dir/metrics.jsonl has the training record of `step`."""
    path = run_dir / "metrics.jsonl"

    def check() -> bool:
        try:
            return any(
                f'"step": {step},' in line and '"loss"' in line for line in path.read_text().splitlines()
            )
        except FileNotFoundError:
            return False

    return check


def sigkill_then_resume(config: Path, run_dir: Path, max_steps: int) -> PretrainRun:
    """SIGKILL every rank of a 2-rank run of `config` (run dir `run_dir`, checkpoints every 2 steps) once it
    logged a random step of 3..max_steps-1, then run it again to its end. Returns the second run, after
    asserting that it exited 0 and resumed from a checkpoint."""
    kill_step = random.Random().randint(3, max_steps - 1)
    print(f"killing at step {kill_step}")
    proc = start(config)
    wait_until(proc, reached_step(run_dir, kill_step), poll=0.01)
    kill_all(proc)
    run = run_pretrain(config, ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    assert "resuming from" in run.output
    return run


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker at once (workers may sit in their own process groups)."""
    family = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs([p for p in map(_process, family) if p is not None], timeout=30)


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
