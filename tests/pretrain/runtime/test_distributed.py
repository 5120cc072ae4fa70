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
