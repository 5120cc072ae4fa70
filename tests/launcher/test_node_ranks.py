"""Two per-node launches (node ranks 0 and 1) on loopback form one process group; exit codes survive."""

import signal
import subprocess
import sys
import time

from tests.helpers import free_port

NODE = """
import sys
import time
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
