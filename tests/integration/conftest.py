"""Fixtures for the multi-process tests (the session's shards are in tests/conftest.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.slurm import CANNOT_RUN_HERE, SCRIPT


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start munged, slurmctld and two slurmd (node1, node2) unless they run; skip only where impossible."""
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if out.returncode == CANNOT_RUN_HERE:
        pytest.skip(f"no local SLURM cluster: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, f"scripts/local_slurm.sh failed:\n{out.stdout}\n{out.stderr}"
