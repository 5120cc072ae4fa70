"""DeepSpeed hostfiles from a SLURM allocation or a node list."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from data_pipeline.integrity import write_atomic
from launcher.job_config import LaunchError


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list (`node[1-2],gpu7`) with `scontrol show hostnames`; a plain comma list
    needs no scontrol. Raises LaunchError when a bracketed list cannot be expanded."""
    if "[" not in nodelist:
        return [n.strip() for n in nodelist.split(",") if n.strip()]
    if shutil.which("scontrol") is None:
        raise LaunchError(
            f"cannot expand node list {nodelist!r}: scontrol is not on PATH; pass --nodes a,b,c"
        )
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    if out.returncode != 0:
        raise LaunchError(f"scontrol show hostnames {nodelist!r} failed: {out.stderr.strip()}")
    return out.stdout.split()


def allocation_nodes() -> list[str]:
    """The nodes of the current SLURM allocation ($SLURM_JOB_NODELIST). Raises LaunchError outside one."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("not inside a SLURM allocation (no SLURM_JOB_NODELIST); pass --nodes a,b,c")
    return expand_nodelist(nodelist)


def write_hostfile(nodes: list[str], slots: int, path: Path) -> Path:
    """Write `host slots=N` lines (DeepSpeed's hostfile format) atomically; return the path."""
    if not nodes:
        raise LaunchError("no nodes to write to the hostfile")
    if slots < 1:
        raise LaunchError(f"--slots must be >= 1, got {slots}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), "".join(f"{node} slots={slots}\n" for node in nodes))
    return path
