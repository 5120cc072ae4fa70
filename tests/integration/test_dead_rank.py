"""A rank of a real 2-rank CPU training killed with SIGKILL mid-run: `mlm-launch local` ends the whole
node within seconds, with the dead rank's exit code and a line naming it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.helpers.runs import write_config

pytestmark = pytest.mark.integration


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """{RANK: pid} of the launcher's child processes (read from /proc)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [v for v in environ if v.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0][5:])] = pid
    return ranks


def _steps_logged(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip() and "loss" in json.loads(line))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc")
def test_sigkill_of_one_rank_ends_the_training_node_within_seconds(tiny_shards, tmp_path):
    config = write_config(tmp_path, tiny_shards, train={"max_steps": 1000, "log_every_steps": 1})
    env = {**os.environ, "MLM_KILL_GRACE_S": "5", "OMP_NUM_THREADS": "1"}
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher",
            "local",
            "--cpu",
            "--nproc",
            "2",
            "--master-port",
            str(free_port()),
        ]
        + ["--", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while _steps_logged(tmp_path / "run" / "metrics.jsonl") < 2:  # mid-run: steps are being trained
            assert node.poll() is None, node.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no training steps within 240 s"
            time.sleep(0.5)
        pids = _rank_pids(node.pid)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        code = node.wait(timeout=120)
        took = time.monotonic() - killed_at
    finally:
        if node.poll() is None:
            node.kill()
    out = node.stdout.read()
    assert code == 128 + signal.SIGKILL, out[-3000:]
    assert "mlm-launch: rank 1 (local rank 1) was killed by SIGKILL" in out
    print(f"node ended {took:.1f} s after the SIGKILL")
    assert took < 60, took  # seconds (grace 5 s), not the collective timeout
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
