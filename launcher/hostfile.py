"""DeepSpeed hostfiles from a SLURM allocation or a node list."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

from data_pipeline.integrity import write_atomic
from launcher.job_config import LaunchError
from launcher.slurm import line_break

# One DNS label (RFC 1123): ASCII letters, digits and hyphens, 1-63 of them, no hyphen at either end.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
# A SLURM hostlist expression (`node[01-04,7],gpu3`), which scontrol expands; it starts with a name.
_NODELIST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,\[\]-]*")


def is_host(host: str) -> bool:
    """Whether `host` is a DNS name (dot-separated RFC 1123 labels, at most 253 characters), an IPv4
    dotted quad or an IPv6 address without a scope (`%eth0`), which Python's parser takes as free text."""
    if ":" in host:
        try:
            return "%" not in host and bool(ipaddress.IPv6Address(host))
        except ValueError:
            return False
    if _DIGITS_AND_DOTS.fullmatch(host):  # getaddrinfo reads these as an address (`1.2.3`, `010.0.0.1`)
        try:
            return bool(ipaddress.IPv4Address(host))
        except ValueError:
            return False
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def check_host(host: str, where: str) -> str:
    """Return `host` if `is_host`; LaunchError naming `where` (a file:line, flag or variable) otherwise.

    The one rule for every host the launcher reads, writes or passes on: DeepSpeed hands hostfile hosts
    to ssh and pdsh as arguments (`-oProxyCommand=...` would run a command here) and puts
    `--master_addr` into the shell command pdsh runs on every node.
    """
    if is_host(host):
        return host
    raise LaunchError(
        f"{where}: host {host[:80]!r} is not a host name or IP address; use a DNS name (letters, digits "
        "and inner hyphens, in dot-separated labels: gpu-01.cluster), an IPv4 or an IPv6 address"
    )


def expand_nodelist(nodelist: str, where: str = "--nodes") -> list[str]:
    """The hosts of a SLURM node list (`node[1-2],gpu7`), each checked with `check_host`.

    A bracketed list is expanded with `scontrol show hostnames`; a plain comma list needs no scontrol.
    `where` names the list's source in messages. Raises LaunchError for a list that is no hostlist
    expression (scontrol would read a leading `-` as its option), a host that is no host name, or a
    bracketed list scontrol cannot expand.
    """
    if "[" not in nodelist:
        return [check_host(n.strip(), where) for n in nodelist.split(",") if n.strip()]
    if not _NODELIST.fullmatch(nodelist):
        raise LaunchError(f"{where}: {nodelist[:80]!r} is not a SLURM node list (e.g. node[01-04],gpu7)")
    if shutil.which("scontrol") is None:
        raise LaunchError(
            f"cannot expand node list {nodelist!r}: scontrol is not on PATH; pass --nodes a,b,c"
        )
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    if out.returncode != 0:
        raise LaunchError(f"scontrol show hostnames {nodelist!r} failed: {out.stderr.strip()}")
    return [check_host(host, where) for host in out.stdout.split()]


def allocation_nodes() -> list[str]:
    """The nodes of the current SLURM allocation ($SLURM_JOB_NODELIST). Raises LaunchError outside one,
    or for a host that is no host name."""
    for variable in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if os.environ.get(variable):
            return expand_nodelist(os.environ[variable], "$" + variable)
    raise LaunchError("not inside a SLURM allocation (no SLURM_JOB_NODELIST); pass --nodes a,b,c")


def write_hostfile(nodes: list[str], slots: int, path: Path) -> Path:
    """Write `host slots=N` lines (DeepSpeed's hostfile format) atomically; return the path.

    Raises LaunchError, writing nothing, for no nodes, a slot count below 1 or a node that is no host
    name (named by the line it would have had).
    """
    if not nodes:
        raise LaunchError("no nodes to write to the hostfile")
    if slots < 1:
        raise LaunchError(f"--slots must be >= 1, got {slots}")
    path = Path(path)
    for number, node in enumerate(nodes, 1):
        check_host(node, f"{path}:{number}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), "".join(f"{node} slots={slots}\n" for node in nodes))
    return path


_HOSTFILE_LINE = re.compile(r"(\S+)\s+slots=(\d+)")  # DeepSpeed's own pattern (launcher/runner.py)


def read_hostfile(path: Path) -> list[str]:
    """The hosts of a DeepSpeed hostfile (`host slots=N` lines; blank and `#` lines skipped), in order.

    Lines end where DeepSpeed's readlines() ends them: at a newline, a carriage return or both. Raises
    LaunchError naming the file (and line) when it is missing, unreadable, lists no host, names a host
    twice, names something that is no host name (`check_host`), holds another line break (`line_break`:
    U+2028, U+000B, ...) or has a line of another form: DeepSpeed itself would go on with local GPUs only
    when the file is missing, train with another world size than the one checked against the config
    (it reads `a slots=1<U+2028>b slots=1` as host a alone), and pass the first word of a line to ssh.
    """
    try:  # universal newlines, as DeepSpeed's open(): "\r\n" and "\r" arrive as "\n"
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise LaunchError(f"hostfile {path}: {reason}; write one with `mlm-launch hostfile`") from None
    hosts: list[str] = []
    for number, line in enumerate(lines, 1):
        hidden = line_break(line)
        if hidden is not None:
            raise LaunchError(
                f"{path}:{number}: {line[:80]!r} holds the line break U+{ord(hidden):04X}, which DeepSpeed "
                "does not split at; write one `host slots=N` per line"
            )
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOSTFILE_LINE.match(line)  # what DeepSpeed accepts
        if match is None:
            raise LaunchError(f"{path}:{number}: {line[:80]!r} is not `host slots=N`")
        check_host(match.group(1), f"{path}:{number}")
        if match.group(1) in hosts:
            raise LaunchError(f"{path}:{number}: host {match.group(1)!r} is listed twice")
        hosts.append(match.group(1))
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no host (`host slots=N` lines)")
    return hosts
