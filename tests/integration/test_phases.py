"""A run through a phase boundary (2 CPU ranks, ZeRO-2): batch warmup in phase 0, then at step 4 a phase
with shorter rows, another mask rate and another batch; a SIGKILL right at the boundary resumes into
the right phase, bit-identical to the uninterrupted run (losses, tokens and the rows of every step)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.processes import kill_all, start, wait_until
from tests.helpers.runs import run_pretrain, step_trace, write_config

pytestmark = pytest.mark.integration

BOUNDARY = 4
SETTINGS = {
    # phase 0: the global batch ramps 16 -> 48 (micro 8 x 2 ranks x 1..3 accumulation) over 3 steps
    "train": {"max_steps": 7, "grad_accum_steps": 3, "batch_warmup_steps": 3, "batch_warmup_start": 16},
    "optim": {"warmup_steps": 2, "schedule": "wsd", "decay_steps": 2},
    "checkpoint": {"every_steps": 2, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
    "phases": [
        {
            "start_step": BOUNDARY,
            "data": {"seq_len": 32},
            "masking": {"probability": 0.3},
            "train": {"grad_accum_steps": 1},
        }
    ],
}


def records(run_dir) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def checkpoint_of(run_dir, step: int):
    def check() -> bool:
        latest = run_dir / "checkpoints" / "latest"
        return latest.exists() and latest.read_text().strip() == f"step-{step:08d}"

    return check


def test_a_phase_boundary_trains_and_resumes_bit_identically_after_a_sigkill_there(tiny_shards, tmp_path):
    for name in ("baseline", "killed"):
        (tmp_path / name).mkdir()
    baseline = write_config(tmp_path / "baseline", tiny_shards, **SETTINGS)
    run = run_pretrain(baseline, ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    steps = records(run.run_dir)
    assert [steps[s]["phase"] for s in sorted(steps)] == [0, 0, 0, 0, 1, 1, 1]
    assert [len(steps[s]["samples"]) for s in sorted(steps)] == [16, 16, 32, 48, 16, 16, 16]
    masked_share = {
        s: r["masked_tokens"] / (r["tokens"] - steps.get(s - 1, {"tokens": 0})["tokens"])
        for s, r in steps.items()
    }
    assert all(0.1 < masked_share[s] < 0.2 for s in range(1, 5)) and all(
        0.25 < masked_share[s] < 0.35 for s in range(5, 8)
    )
    assert "phase 1 from step 4" in run.output and "a new sample stream" in run.output

    config = write_config(tmp_path / "killed", tiny_shards, **SETTINGS)
    proc = start(config)
    wait_until(proc, checkpoint_of(tmp_path / "killed" / "run", BOUNDARY), poll=0.005)
    kill_all(proc)  # the boundary's checkpoint is committed; the run is entering phase 1
    resumed = run_pretrain(config, ranks=2)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"resuming from {tmp_path / 'killed' / 'run' / 'checkpoints'}" in resumed.output
    assert "phase 1 from step" in resumed.output
    assert step_trace(resumed.run_dir) == step_trace(run.run_dir)
