"""Two per-node launches (node ranks 0 and 1) on loopback form one process group; exit codes survive."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import free_port

NODE = """
import sys
import time

import pytest
from launcher.local import NodeSpec, run_node
spec = NodeSpec(nproc=1, nnodes=2, node_rank={rank}, master_port={port}, rdzv_timeout_s=60, cpu=True)
sys.exit(run_node(spec, [{out!r}, "75"], module="tests.launcher.rendezvous_probe"))
"""


def test_two_node_launches_meet_and_rank0_exit_code_is_kept(tmp_path):
    port = free_port()
    nodes = {}
    for rank in (1, 0):  # node 1 first: it must wait for the master, not fail
        code = NODE.format(rank=rank, port=port, out=str(tmp_path))
        nodes[rank] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    codes = {rank: p.wait(timeout=120) for rank, p in nodes.items()}
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2 3.0", "2 3.0"]
    assert codes == {0: 75, 1: 0}  # node 0's rank said "preempted"; the launcher did not turn it into 1
    assert "RANK=1 " in nodes[1].stdout.read()  # the command is printed with its environment


def test_stop_signal_while_waiting_for_the_master_exits_75_without_starting_ranks(tmp_path):
    code = NODE.format(rank=1, port=free_port(), out=str(tmp_path))  # nobody listens: it waits
    node = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    time.sleep(2)  # inside wait_for_master by now
    node.send_signal(signal.SIGUSR1)  # SLURM's time-limit warning
    assert node.wait(timeout=30) == 75
    assert "before the ranks started" in node.stdout.read()
    assert not list(tmp_path.iterdir())  # no rank ran


DEAD_RANK_NODE = """
import sys
from launcher.first_failure import failure_recorder
from launcher.local import NodeSpec, run_node
spec = NodeSpec(nproc=2, master_port={port}, cpu=True)
record = failure_recorder({record!r}, print)  # as `slurm-node` does with $MLM_FAILURE_FILE
args = [{out!r}]
sys.exit(run_node(spec, args, module="tests.launcher.dead_rank_probe", node_name="n7", on_failure=record))
"""


def test_a_rank_killed_with_sigkill_ends_the_node_in_seconds_and_its_code_is_the_nodes(tmp_path):
    env = {**os.environ, "MLM_KILL_GRACE_S": "2"}
    record = tmp_path / "failed"
    code = DEAD_RANK_NODE.format(port=free_port(), out=str(tmp_path), record=str(record))
    node = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"pid{r}").exists() for r in (0, 1)):
            assert node.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.2)
        survivor = int((tmp_path / "pid0").read_text())
        os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
        killed_at = time.monotonic()
        assert node.wait(timeout=60) == 128 + signal.SIGKILL  # the dead rank's code, not the survivor's
        took = time.monotonic() - killed_at
    finally:
        if node.poll() is None:
            node.kill()
    out = node.stdout.read()
    assert "rank 1 (local rank 1 on n7) was killed by SIGKILL; stopping the other ranks" in out
    # The job script's record: the dead rank's exit status and who it was; nothing for the survivor, whose
    # SIGKILL came after the stop began.
    assert record.read_text() == "137 rank 1 (local rank 1 on n7) was killed by SIGKILL\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed", "pid0", "pid1"]  # no file left aside
    assert "local rank(s) [0] alive 2 s after SIGTERM: SIGKILL" in out  # it ignored SIGTERM
    assert took < 30, took  # the 2 s grace plus polling, far from any collective timeout
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)  # nothing left behind


def test_the_first_failure_record_wins(tmp_path):
    from launcher.first_failure import record_first_failure

    path = str(tmp_path / "failed")
    assert record_first_failure(path, 137, "rank 3 (local rank 1 on node2) was killed by SIGKILL")
    assert not record_first_failure(path, 1, "rank 0 (local rank 0 on node1) exited with 1")
    assert (tmp_path / "failed").read_text() == "137 rank 3 (local rank 1 on node2) was killed by SIGKILL\n"
    assert [p.name for p in tmp_path.iterdir()] == ["failed"]


def test_a_link_planted_at_the_aside_name_is_not_written_through(tmp_path):
    import socket

    from launcher.first_failure import record_first_failure

    target = tmp_path / "precious"
    target.write_text("keep\n")
    path = tmp_path / "failed"
    (tmp_path / f"failed.{socket.gethostname()}.{os.getpid()}").symlink_to(target)
    with pytest.raises(FileExistsError):
        record_first_failure(str(path), 137, "rank 1 (local rank 1) was killed by SIGKILL")
    assert target.read_text() == "keep\n" and not path.exists()


def test_kill_grace_is_30_s_unless_the_environment_says_otherwise():
    from launcher.job_config import LaunchError
    from launcher.local import kill_grace_s

    assert kill_grace_s({}) == 30.0 and kill_grace_s({"MLM_KILL_GRACE_S": "0.5"}) == 0.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(LaunchError, match="MLM_KILL_GRACE_S"):
            kill_grace_s({"MLM_KILL_GRACE_S": bad})


def test_gpu_ranks_get_nccl_error_handling_unless_the_user_set_it(monkeypatch):
    from launcher.local import NodeSpec, rank_env

    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    monkeypatch.setenv("NCCL_ASYNC_ERROR_HANDLING", "3")
    env = rank_env(NodeSpec(nproc=2), 1)
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and "NCCL_ASYNC_ERROR_HANDLING" not in env
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in rank_env(NodeSpec(nproc=2, cpu=True), 1)
