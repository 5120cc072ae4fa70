"""pretrain/demo.py: the demo's own knob is checked before any stage runs."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_bad_demo_max_steps_stops_before_any_stage(tmp_path):
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_MAX_STEPS": "6OO"}
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.demo"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "DEMO_MAX_STEPS='6OO' is not a positive integer" in result.stderr
    assert not (tmp_path / "demo").exists()
