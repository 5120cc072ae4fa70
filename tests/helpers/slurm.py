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


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, Reason, ExitCode, ...)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def release_requeued(job_id: str) -> None:
    """SLURM holds a requeued job for ~2 minutes (BeginTime); start it now to keep the tests short."""
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


def wait_for_job(job_id: str, timeout_s: float, until=None) -> dict[str, str]:
    """Poll until the job has ended (or `until(fields)` holds); requeued jobs are released at once.

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
        if fields["JobState"] == "PENDING" and fields.get("Reason") == "BeginTime":
            release_requeued(job_id)
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id} did not finish within {timeout_s} s: {job_fields(job_id)}")
