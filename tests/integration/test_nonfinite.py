"""Non-finite losses through the real trainer (2 CPU ranks): detected at their step with the rank named,
skipped without touching the weights, and past health.max_nonfinite_skips the run stops (exit 1) with
`latest` still on the last good checkpoint. NaNs come from debug.nonfinite_loss_steps (fault injection)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import run_pretrain, write_config

pytestmark = pytest.mark.integration


def module_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The model weights DeepSpeed saved in the checkpoint of `step` (our own test artefact: trusted)."""
    path = run_dir / "checkpoints" / f"step-{step:08d}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ZeRO-0 fp32 drops the step's gradients itself; ZeRO-2 relies on DeepSpeed's overflow check.
@pytest.mark.parametrize("stage", [0, 2])
def test_a_nan_step_is_detected_named_and_skipped_without_an_update(tiny_shards, tmp_path, stage):
    config = write_config(
        tmp_path,
        tiny_shards,
        zero={"stage": stage},
        train={"max_steps": 5, "grad_accum_steps": 2},
        checkpoint={"every_steps": 1, "keep_last": 10},
        health={"max_nonfinite_skips": 1},
        debug={"nonfinite_loss_steps": [3], "fault_rank": 1},
    )
    run = run_pretrain(config, ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    assert "non-finite loss at step 3 on rank(s) [1]: step skipped" in run.output
    steps = {r["step"]: r for r in run.metrics if "loss" in r}
    assert math.isnan(steps[3]["loss"]) and steps[3]["nonfinite_skipped"] == 1
    assert all(math.isfinite(steps[s]["loss"]) for s in (1, 2, 4, 5)), steps
    weights = {s: module_weights(run.run_dir, s) for s in (2, 3, 4)}
    assert all(torch.isfinite(w).all() for w in weights[4].values())
    assert same_weights(weights[2], weights[3])  # the bad step changed nothing
    assert not same_weights(weights[3], weights[4])  # and training went on


def test_more_bad_steps_than_allowed_stop_the_run_keeping_the_last_good_checkpoint(tiny_shards, tmp_path):
    config = write_config(
        tmp_path,
        tiny_shards,
        train={"max_steps": 8, "grad_accum_steps": 1},
        checkpoint={"every_steps": 2, "keep_last": 10},
        health={"max_nonfinite_skips": 1},
        debug={"nonfinite_loss_steps": [5, 6], "fault_rank": 0},
    )
    run = run_pretrain(config, ranks=2)
    assert run.returncode == 1, run.output[-3000:]
    assert "non-finite loss at step 6 on rank(s) [0]: 2 bad step(s) in a row" in run.output
    checkpoints = run.run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000004"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000002", "step-00000004"]
    assert max(r["step"] for r in run.metrics if "loss" in r) == 5  # step 6 raised before it was logged
