"""A real two-node SLURM for tests: scripts/local_slurm.sh starts it (idempotent; the `slurm_cluster`
fixture in tests/integration/conftest.py runs it); these helpers watch its jobs."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local_slurm.sh"
CANNOT_RUN_HERE = 2  # local_slurm.sh's exit code when SLURM cannot be installed or started here
CONTROLLER_LOG = "/var/log/slurm/slurmctld.log"  # SlurmctldLogFile in local_slurm.sh's slurm.conf


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, Reason, ExitCode, ...)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def kill_wait_s() -> int:
    """The cluster's KillWait: seconds between the SIGTERM SLURM sends a step it stops and the SIGKILL."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True)
    return int(re.search(r"^KillWait\s*=\s*(\d+) sec", out.stdout, re.M).group(1))


def earlier_run_lingers(job_id: str) -> bool:
    """Whether an earlier run of the job has not yet left the nodes: a slurmstepd of it still alive on
    this host (both emulated nodes run here), or a node still completing (its kill not yet acknowledged)."""
    stepd = subprocess.run(["pgrep", "-f", rf"^slurmstepd: \[{job_id}\."], capture_output=True)
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True).stdout
    return stepd.returncode == 0 or "comp" in states


def release_requeued(job_id: str) -> None:
    """SLURM holds a requeued job for ~2 minutes (BeginTime); start it now to keep the tests short.

    Call it once the previous run has left both nodes (`earlier_run_lingers` is false); it also lets that
    second pass: slurmd revokes the old run's credential when it kills it and compares credential times
    in whole seconds, so a new run launched within that second is refused ("Job N already killed, do not
    launch batch job") and the job ends FAILED. SLURM's own hold keeps the two apart on a real cluster.
    """
    time.sleep(1.1)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


def scheduler_log(job_id: str) -> str:
    """The slurmctld log lines about the job (why it was killed, requeued or not started), for failures."""
    try:
        lines = Path(CONTROLLER_LOG).read_text(errors="replace").splitlines()
    except OSError as err:
        return f"({CONTROLLER_LOG}: {err})"
    return "\n".join(line for line in lines if re.search(rf"\bJobId={job_id}\b", line))


def wait_for_job(job_id: str, timeout_s: float, until=None) -> dict[str, str]:
    """Poll until the job has ended (or `until(fields)` holds); requeued jobs are released early.

    Returns the last fields; fails the test on timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if until is not None and until(fields):
            return fields
        if fields["JobState"] in (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ):
            return fields
        requeued = fields["JobState"] == "PENDING" and fields.get("Reason") == "BeginTime"
        if requeued and not earlier_run_lingers(job_id):
            release_requeued(job_id)
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    late = job_fields(job_id)
    pytest.fail(f"job {job_id} did not finish within {timeout_s} s: {late}\n{scheduler_log(job_id)}")
