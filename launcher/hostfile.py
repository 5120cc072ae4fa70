"""DeepSpeed hostfiles from a SLURM allocation or a node list."""

from __future__ import annotations

import os
import re
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


_HOSTFILE_LINE = re.compile(r"(\S+)\s+slots=(\d+)")  # DeepSpeed's own pattern (launcher/runner.py)


def read_hostfile(path: Path) -> list[str]:
    """The hosts of a DeepSpeed hostfile (`host slots=N` lines; blank and `#` lines skipped), in order.

    Raises LaunchError naming the file (and line) when it is missing, unreadable, lists no host, names a
    host twice or has a line of another form: DeepSpeed itself would go on with local GPUs only when the
    file is missing, and train with another world size than the one checked against the config.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise LaunchError(f"hostfile {path}: {reason}; write one with `mlm-launch hostfile`") from None
    hosts: list[str] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOSTFILE_LINE.match(line)  # what DeepSpeed accepts
        if match is None:
            raise LaunchError(f"{path}:{number}: {line[:80]!r} is not `host slots=N`")
        if match.group(1) in hosts:
            raise LaunchError(f"{path}:{number}: host {match.group(1)!r} is listed twice")
        hosts.append(match.group(1))
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no host (`host slots=N` lines)")
    return hosts
