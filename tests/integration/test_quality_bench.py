"""bench/quality.py in a smoke mode (2 pretraining steps, a sliver of a fine-tuning epoch), so the quality
bench cannot rot: both trainers run as processes, a random-init model joins them, all three go through the
default suite, and the table has the three columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.environment import LAUNCHER_VARIABLES

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"


def test_smoke_mode_pretrains_both_and_fine_tunes_all_three_on_the_default_suite(tiny_shards, tmp_path):
    cmd = [sys.executable, str(BENCH), "--shards", str(tiny_shards), "--work", str(tmp_path), "--seeds", "1"]
    cmd += ["--steps", "2", "--warmup", "1", "--eval-rows", "16", "--finetune-epochs", "0.05"]
    cmd += ["--finetune-set", "max-seq-len=32"]
    # The bench is a standalone script: no launcher variables, even where pytest itself runs under a
    # launcher (tests/conftest.py fails a test module that leaves some behind).
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env |= {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "mlm-train (ours)" in out.stdout and "random init" in out.stdout
    assert "default suite average (downstream)" in out.stdout and "goal downstream" in out.stdout

    suite = json.loads((tmp_path / "suite" / "tiny-2steps-lr0.002" / "suite.json").read_text())
    assert list(suite["models"]) == ["ours-seed0", "hf-seed0", "random-seed0"]
    assert [t["name"] for t in suite["tasks"]] == ["stdlib-docstrings", "stdlib-names"]
    result = json.loads((tmp_path / "quality-tiny-2steps-lr0.002.json").read_text())
    for who in ("ours", "hf", "random"):
        (row,) = result[who]
        assert row["downstream"] == suite["average"][f"{who}-seed0"]["per_seed"]
        assert row["mlm_loss"] > 0 and 0 <= row["mlm_accuracy"] <= 1
