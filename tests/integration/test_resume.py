"""Exact resume through the real trainer (2 CPU ranks, ZeRO-2): kills, partial saves, signals.

A resumed run must log per-step losses bit-identical to the uninterrupted run and consume the same
samples: every run logs each step's global sample indices (debug.log_sample_indices), and the traces
compared below hold them, so a repeated or skipped sample fails the comparison.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import psutil
import pytest

from tests.helpers.processes import kill_all, output_of, reached_step, sigkill_then_resume, start, wait_until
from tests.helpers.runs import run_pretrain, step_trace, write_config

pytestmark = pytest.mark.integration

MAX_STEPS = 8
SETTINGS = {
    "train": {"max_steps": MAX_STEPS, "grad_accum_steps": 1},
    "checkpoint": {"every_steps": 2, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
}


@pytest.fixture(scope="module")
def baseline(tiny_shards, tmp_path_factory) -> tuple[Path, dict]:
    """(config path, trace) of one uninterrupted run; its run dir keeps checkpoints 2, 4, 6, 8."""
    root = tmp_path_factory.mktemp("baseline")
    config = write_config(root, tiny_shards, **SETTINGS)
    run = run_pretrain(config, ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    expected = step_trace(run.run_dir)
    samples = [i for step in sorted(expected) for i in expected[step][2]]
    assert len(samples) == MAX_STEPS * 16 == len(set(samples))  # 8 per rank and step; one epoch, no repeats
    return config, expected


def fresh_config(tmp_path: Path, tiny_shards: Path, **updates) -> Path:
    settings = {k: {**v, **updates.get(k, {})} for k, v in SETTINGS.items()}
    return write_config(tmp_path, tiny_shards, **settings)


def test_two_uninterrupted_runs_are_identical(baseline, tiny_shards, tmp_path):
    _, expected = baseline
    run = run_pretrain(fresh_config(tmp_path, tiny_shards), ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    assert step_trace(run.run_dir) == expected and sorted(expected) == list(range(1, MAX_STEPS + 1))


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(baseline, tiny_shards, tmp_path):
    _, expected = baseline
    run = sigkill_then_resume(fresh_config(tmp_path, tiny_shards), tmp_path / "run", MAX_STEPS)
    assert step_trace(run.run_dir) == expected  # losses bit for bit, and the same rows (token counts)


def test_sigkill_during_a_save_never_loads_the_partial_checkpoint(baseline, tiny_shards, tmp_path):
    _, expected = baseline
    config = fresh_config(tmp_path, tiny_shards, checkpoint={"every_steps": 1})
    ckpt_dir = tmp_path / "run" / "checkpoints"

    def saving() -> bool:  # a tag dir that exists but is not committed yet
        try:
            names = os.listdir(ckpt_dir)
        except FileNotFoundError:
            return False
        return any(n.startswith("step-") and not (ckpt_dir / n / "COMPLETE.json").exists() for n in names)

    proc = start(config)
    wait_until(proc, saving, poll=0.0002)
    kill_all(proc)
    partial = [
        n
        for n in os.listdir(ckpt_dir)
        if n.startswith("step-") and not (ckpt_dir / n / "COMPLETE.json").exists()
    ]
    assert partial, "the kill was meant to land mid-save"
    run = run_pretrain(config, ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    assert f"skipping checkpoint {partial[0]}" in run.output
    assert step_trace(run.run_dir) == expected


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_to_one_rank_saves_once_exits_75_and_resumes_identically(baseline, tiny_shards, tmp_path, sig):
    _, expected = baseline
    config = fresh_config(tmp_path, tiny_shards, checkpoint={"every_steps": 1000})
    proc = start(config)
    wait_until(proc, reached_step(tmp_path / "run", 3), poll=0.01)
    workers = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if "pretrain" in " ".join(p.cmdline())
    ]
    assert len(workers) == 2
    os.kill(workers[-1].pid, sig)  # one rank only: the others learn it through the all-reduce
    proc.wait(timeout=120)
    output = output_of(proc)
    worker_codes = [line for line in output.splitlines() if "exitcode" in line]
    assert proc.returncode != 0 and (proc.returncode == 75 or any("75" in line for line in worker_codes)), (
        output[-3000:]
    )
    tags = sorted(n for n in os.listdir(tmp_path / "run" / "checkpoints") if n.startswith("step-"))
    assert len(tags) == 1, tags  # exactly one save: the preemption one
    stopped_at = int(tags[0].split("-")[1])
    assert stopped_at >= 3 and (tmp_path / "run" / "checkpoints" / tags[0] / "COMPLETE.json").exists()

    run = run_pretrain(config, ranks=2)
    assert run.returncode == 0, run.output[-3000:]
    assert f"step-{stopped_at:08d}" in run.output
    assert step_trace(run.run_dir) == expected


def test_single_process_preemption_exits_75(tiny_shards, tmp_path):
    config = fresh_config(tmp_path, tiny_shards, checkpoint={"every_steps": 1000})
    proc = start(config, ranks=1)
    wait_until(proc, reached_step(tmp_path / "run", 2), poll=0.01)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, output_of(proc)[-3000:]
    shutil.rmtree(tmp_path / "run")


@pytest.mark.parametrize(("stage", "precision"), [(0, "bf16"), (1, "fp32"), (3, "bf16")])
def test_resume_matrix_zero_stage_and_precision(tiny_shards, tmp_path, stage, precision):
    """The other ZeRO stages and bf16 (ZeRO-2 fp32 is covered above): resume from step 4 replays 5-8."""
    config = fresh_config(tmp_path, tiny_shards, checkpoint={"every_steps": 4})
    overrides = [f"zero.stage={stage}", f"precision={precision}"]
    first = run_pretrain(config, overrides, ranks=2)
    assert first.returncode == 0, first.output[-3000:]
    expected = step_trace(first.run_dir)
    shutil.rmtree(first.run_dir / "checkpoints" / f"step-{MAX_STEPS:08d}")
    again = run_pretrain(config, overrides, ranks=2)
    assert again.returncode == 0, again.output[-3000:]
    assert f"resuming from {first.run_dir / 'checkpoints' / 'step-00000004'}" in again.output
    assert step_trace(again.run_dir) == expected
