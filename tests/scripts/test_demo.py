"""scripts/demo.py: its own knob is checked before any stage runs; a stale stage runs again."""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.demo import _stage
from tests.helpers.paths import REPO


def test_a_bad_demo_max_steps_stops_before_any_stage(tmp_path):
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_MAX_STEPS": "6OO"}
    result = subprocess.run(
        [sys.executable, "-m", "scripts.demo"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 2
    assert "DEMO_MAX_STEPS='6OO' is not a positive integer" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_a_stage_done_for_an_older_training_step_runs_again(tmp_path, capsys):
    marker, ran = tmp_path / ".finetune.done", tmp_path / "ran"
    cmd = [sys.executable, "-c", f"open({str(ran)!r}, 'a').write('x')"]
    _stage("fine-tuning", marker, cmd, made_from="the run at step 400")
    _stage("fine-tuning", marker, cmd, made_from="the run at step 400")
    assert ran.read_text() == "x"  # done for that step: skipped
    _stage("fine-tuning", marker, cmd, made_from="the run at step 600")
    assert ran.read_text() == "xx"  # the run trained on since: its old downstream result is stale
    printed = capsys.readouterr().out
    assert "done for the run at step 400, now the run at step 600: running it again" in printed
