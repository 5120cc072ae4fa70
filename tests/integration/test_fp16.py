"""fp16 through the real trainer on 2 CPU ranks, ZeRO 0-3, with DeepSpeed's own fp16 optimizers and
dynamic loss scaling (the CPU fp16 test device, MLM_TEST_CPU_FP16=1; pretrain/runtime/distributed.py).

One torchrun launch trains every stage twice (tests/integration/multi_run.py): a run with overflows
injected as non-finite gradients behind a finite loss (debug.nonfinite_grad_steps) and one NaN loss, and
a run that overflows until the loss scale sits at its floor. The same launch counts the collectives each
step sends through pretrain/runtime/collectives.py,
and ends with an fp32 run whose loader fails on one rank (the
agreed end-of-step error flag; it rides along here to save a launch). A SIGKILL + resume then replays the
ZeRO-2 run bit for bit.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tests.helpers.processes import kill_all, reached_step, start, wait_until
from tests.helpers.runs import CPU_FP16, run_pretrain, run_pretrain_configs, write_config

pytestmark = pytest.mark.integration

STAGES = (0, 1, 2, 3)
MAX_STEPS, SAVE_EVERY = 16, 4
OVERFLOW_STEPS, NAN_STEP = (3, 4), 6
INITIAL_SCALE = 2**8
# The scale each step's backward used. ZeRO-0's FP16_UnfusedOptimizer halves on every overflow; ZeRO 1-3
# absorb the first overflow (hysteresis 2), then halve; hysteresis is not refilled by clean steps.
SCALES = {
    0: [256, 256, 256, 128, 64, 64, 32],
    1: [256, 256, 256, 256, 128, 128, 64],
}
FLOOR_RUN_OVERFLOWS = list(range(3, 9))
FLOOR_STOP = {0: 4, 1: 5}  # scale 2: ZeRO-0 2 -> 1 -> stop; ZeRO 1-3 absorb one, 2 -> 1 -> stop


def rule(stage: int) -> int:
    return 0 if stage == 0 else 1


def training_config(root: Path, shards: Path, stage: int) -> Path:
    (root / f"train-{stage}").mkdir(parents=True)
    return write_config(
        root / f"train-{stage}",
        shards,
        precision="fp16",
        zero={"stage": stage},
        train={"max_steps": MAX_STEPS, "grad_accum_steps": 1, "deterministic": stage == 3},
        fp16={"initial_scale_power": 8},
        eval={"every_steps": 1000, "max_batches": 2},
        checkpoint={"every_steps": SAVE_EVERY, "keep_last": 10},
        debug={
            "nonfinite_grad_steps": list(OVERFLOW_STEPS),
            "nonfinite_loss_steps": [NAN_STEP],
            "fault_rank": 1,
            "log_collectives": True,
        },
    )


def floor_config(root: Path, shards: Path, stage: int) -> Path:
    (root / f"floor-{stage}").mkdir(parents=True)
    return write_config(
        root / f"floor-{stage}",
        shards,
        precision="fp16",
        zero={"stage": stage},
        train={"max_steps": 8, "grad_accum_steps": 1},
        fp16={"initial_scale_power": 1, "min_loss_scale": 1},
        checkpoint={"every_steps": 2, "keep_last": 10},
        eval={"every_steps": 1000, "max_batches": 1},
        debug={"nonfinite_grad_steps": FLOOR_RUN_OVERFLOWS},
    )


def data_error_config(root: Path, shards: Path) -> Path:
    (root / "data-error").mkdir(parents=True)
    return write_config(
        root / "data-error",
        shards,
        train={"max_steps": 6, "grad_accum_steps": 1},
        eval={"every_steps": 1000, "max_batches": 1},
        debug={"data_error_steps": [3], "fault_rank": 1},
    )


@pytest.fixture(scope="module")
def fp16_runs(tiny_shards, tmp_path_factory) -> dict:
    """{("train" | "floor", stage) or "data_error": PretrainRun} of one 2-rank launch over nine configs."""
    root = tmp_path_factory.mktemp("fp16")
    configs = {("train", s): training_config(root, tiny_shards, s) for s in STAGES}
    configs |= {("floor", s): floor_config(root, tiny_shards, s) for s in STAGES}
    configs["data_error"] = data_error_config(root, tiny_shards)  # last: its failing rank may exit first
    runs = run_pretrain_configs(list(configs.values()), ranks=2, env=CPU_FP16, timeout=900)
    return dict(zip(configs, runs, strict=True)) | {"configs": configs}


def steps_of(run) -> dict[int, dict]:
    return {r["step"]: r for r in run.metrics if "loss" in r}


@pytest.mark.parametrize("stage", STAGES)
def test_fp16_trains_on_every_zero_stage_and_a_step_sends_two_collectives(fp16_runs, stage):
    run = fp16_runs[("train", stage)]
    assert run.returncode == 0, run.output[-3000:]
    steps = steps_of(run)
    assert sorted(steps) == list(range(1, MAX_STEPS + 1))
    first, last = (sum(steps[s]["mlm_loss"] for s in group) / 2 for group in ((1, 2), (15, 16)))
    assert last < first - 0.5, f"fp16 loss did not fall on ZeRO-{stage}: {first:.3f} -> {last:.3f}"
    assert all(isinstance(r["loss_scale"], float) for r in steps.values())
    # Collectives sent through pretrain/runtime/collectives.py since the previous record: the counts and the
    # end-of-step agreement; more only after a save, and at step 1 (the first step's data is agreed).
    after_save = {s + 1 for s in range(SAVE_EVERY, MAX_STEPS, SAVE_EVERY)}
    assert {s: r["collectives"] for s, r in steps.items() if s > 1 and s not in after_save} == {
        s: 2 for s in range(2, MAX_STEPS + 1) if s not in after_save
    }
    assert all(steps[s]["collectives"] > 2 for s in after_save | {1})


@pytest.mark.parametrize("stage", STAGES)
def test_an_overflow_is_skipped_at_its_step_and_the_scale_follows_the_stage_rule(fp16_runs, stage):
    run = fp16_runs[("train", stage)]
    steps = steps_of(run)
    expected_skipped = [0, 0, 1, 2, 2, 3, 3]  # overflows at 3 and 4, then the NaN loss of step 6
    assert [steps[s]["skipped_steps"] for s in range(1, 8)] == expected_skipped
    assert [steps[s]["loss_scale"] for s in range(1, 8)] == SCALES[rule(stage)]
    assert steps[1]["loss_scale"] == INITIAL_SCALE
    # An overflow behind a finite loss is loss scaling at work, not a bad loss; a NaN loss still is.
    assert all(math.isfinite(steps[s]["loss"]) for s in OVERFLOW_STEPS)
    assert [steps[s]["nonfinite_skipped"] for s in range(1, 8)] == [0, 0, 0, 0, 0, 1, 1]
    assert math.isnan(steps[NAN_STEP]["loss"])
    assert f"non-finite loss at step {NAN_STEP} on rank(s) [1]: step skipped" in run.output


@pytest.mark.parametrize("stage", STAGES)
def test_the_loss_scale_floor_stops_the_run_keeping_the_last_good_checkpoint(fp16_runs, stage):
    run = fp16_runs[("floor", stage)]
    stop = FLOOR_STOP[rule(stage)]
    assert run.returncode == 1, run.output[-3000:]
    lines = [line for line in run.output.splitlines() if line.startswith("mlm-train: stopped:")]
    assert (
        f"mlm-train: stopped: fp16 step {stop} overflowed with the loss scale at its floor "
        f"(fp16.min_loss_scale=1); {stop - 2} step(s) skipped so far; stopping. The last good checkpoint "
        "is kept: lower optim.lr, raise optim.warmup_steps or use bf16 before resuming"
    ) in lines  # (the section may also hold the previous config's last line from the other rank)
    assert "Traceback" not in run.output
    assert max(steps_of(run)) == stop - 1  # the stopping step is not logged
    checkpoints = run.run_dir / "checkpoints"
    saved = [s for s in range(2, stop, 2)]
    assert (checkpoints / "latest").read_text().strip() == f"step-{saved[-1]:08d}"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [f"step-{s:08d}" for s in saved]


def test_a_loader_error_on_one_rank_stops_every_rank_after_the_same_step(fp16_runs):
    run = fp16_runs["data_error"]
    assert run.returncode == 1, run.output[-3000:]
    failed = "mlm-train: error: injected fault (debug.data_error_steps): could not read the data of step 3"
    stopped = (
        "mlm-train: stopped: rank(s) [1] could not read the data of step 3; every rank stops (the error is "
        "in that rank's log)"
    )
    lines = run.output.splitlines()
    assert failed in lines and stopped in lines  # rank 1's own error; rank 0 learns it from the agreement
    assert max(steps_of(run)) == 2  # both trained steps 1 and 2, neither started step 3


def trace(run_dir: Path) -> dict[int, tuple]:
    """{step: (loss, loss scale, cumulative tokens, skipped steps)} of an fp16 run (NaN as 'nan', so
    equal traces compare equal)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        r["step"]: (
            "nan" if math.isnan(r["loss"]) else r["loss"],
            r["loss_scale"],
            r["tokens"],
            r["skipped_steps"],
        )
        for r in records
        if "loss" in r
    }


def test_sigkill_and_resume_under_fp16_repeat_losses_and_loss_scales_bit_for_bit(fp16_runs, tmp_path):
    baseline = fp16_runs[("train", 2)]
    assert baseline.returncode == 0, baseline.output[-3000:]
    config = fp16_runs["configs"][("train", 2)]
    (tmp_path / "run").mkdir()
    run_dir = tmp_path / "run"
    kill_step = random.Random().randint(SAVE_EVERY + 1, MAX_STEPS - 2)
    print(f"killing at step {kill_step}")
    proc = start(config, [f"run_dir={run_dir}"], env=CPU_FP16)
    wait_until(proc, reached_step(run_dir, kill_step), poll=0.01)
    kill_all(proc)
    resumed = run_pretrain(config, [f"run_dir={run_dir}"], ranks=2, env=CPU_FP16)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "resuming from" in resumed.output
    expected = trace(baseline.run_dir)
    assert trace(run_dir) == expected and sorted(expected) == list(range(1, MAX_STEPS + 1))
    assert {s: v[1] for s, v in expected.items()}[MAX_STEPS] < INITIAL_SCALE  # the scale did move
