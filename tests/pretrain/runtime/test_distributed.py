"""pretrain/runtime/distributed.py: what process-group start-up costs a user on a CPU machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.helpers import free_port
from tests.helpers.paths import REPO

ROOT = str(REPO)


def test_cpu_start_up_compiles_no_deepspeed_op(tmp_path):
    # DeepSpeed's CPU comm backend would JIT-compile its shared-memory inference all-reduce here (about
    # 47 s on 2 cores, on the first run in every venv); training never uses it, so nothing may be built.
    extensions = tmp_path / "torch_extensions"
    script = textwrap.dedent(
        """
        from pretrain.runtime.distributed import init_distributed
        import deepspeed.comm.comm as ds_comm

        info = init_distributed(timeout_minutes=1.0)
        print("RESULT", info.backend, info.world_size, ds_comm.cdb.shm_comm_op)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TORCH_EXTENSIONS_DIR=str(extensions), MASTER_PORT=str(free_port()), PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    results = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert results == ["RESULT gloo 1 None"]
    built = [str(p.relative_to(extensions)) for p in extensions.rglob("*")] if extensions.exists() else []
    assert built == []


def test_a_loopback_hostname_on_a_multi_node_world_without_gloo_ifname_is_named_in_one_line():
    from pretrain.runtime.distributed import loopback_hostname_problem

    def resolve_to(address):
        return lambda name: address

    line = loopback_hostname_problem(16, 8, env={}, resolve=resolve_to("127.0.1.1"), hostname="node7")
    assert line is not None and "\n" not in line
    assert "'node7' resolves to 127.0.1.1" in line and "GLOO_SOCKET_IFNAME=" in line
    with_nccl = loopback_hostname_problem(
        16, 8, env={"NCCL_SOCKET_IFNAME": "ib0"}, resolve=resolve_to("127.0.1.1"), hostname="node7"
    )
    assert "set GLOO_SOCKET_IFNAME=ib0 on every node" in with_nccl
    # Nothing to say: one node, the variable set, a routable address, a name that does not resolve.
    assert loopback_hostname_problem(8, 8, env={}, resolve=resolve_to("127.0.1.1"), hostname="n") is None
    set_env = {"GLOO_SOCKET_IFNAME": "eth0"}
    assert (
        loopback_hostname_problem(16, 8, env=set_env, resolve=resolve_to("127.0.1.1"), hostname="n") is None
    )
    assert loopback_hostname_problem(16, 8, env={}, resolve=resolve_to("10.0.0.7"), hostname="n") is None

    def unresolvable(name):
        raise OSError("no such host")

    assert loopback_hostname_problem(16, 8, env={}, resolve=unresolvable, hostname="n") is None


def test_nccl_error_handling_is_set_unless_the_launcher_chose():
    from pretrain.runtime.distributed import set_nccl_error_handling

    env = {"NCCL_ASYNC_ERROR_HANDLING": "3"}
    set_nccl_error_handling(env)
    assert env == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_ASYNC_ERROR_HANDLING": "3"}
