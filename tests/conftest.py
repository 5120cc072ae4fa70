"""Session-wide test hygiene."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _restore_environment():
    """Put os.environ back after every test.

    Tests that start torch.distributed in this process (and the trainer's own environment preparation)
    write MASTER_ADDR, MASTER_PORT, RANK, ... into os.environ. Left there, a later test's trainer
    subprocess would inherit them and try to listen on a port this process still holds.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
