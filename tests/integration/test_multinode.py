"""Per-node launches without ssh: two `mlm-launch local` invocations (node ranks 0 and 1) on loopback train
the same steps, bit for bit, as one 2-rank torchrun run of the same config."""

import json
import subprocess
import sys

import pytest

from tests.helpers import free_port
from tests.helpers.runs import PretrainRun, run_pretrain, write_config

pytestmark = pytest.mark.integration


def test_two_node_ranks_on_loopback_equal_one_two_rank_run(tiny_shards, tmp_path):
    train = {"max_steps": 6, "log_every_steps": 1}
    (tmp_path / "ref").mkdir()
    (tmp_path / "nodes").mkdir()
    reference = run_pretrain(write_config(tmp_path / "ref", tiny_shards, train=train), ranks=2)
    assert reference.returncode == 0, reference.output[-3000:]

    config = write_config(tmp_path / "nodes", tiny_shards, train=train)
    port = free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "launcher", "local", "--cpu", "--nnodes", "2", "--node-rank", str(rank)]
            + ["--master-port", str(port), "--rdzv-timeout", "120", "--", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (1, 0)  # node rank 1 first: its launcher waits for the master
    ]
    outputs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    run_dir = tmp_path / "nodes" / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert PretrainRun(0, "", run_dir, records).step_losses() == reference.step_losses()
    assert sorted(reference.step_losses()) == list(range(1, 7))
