"""ModernBERT-tiny for real: 2 CPU ranks (ZeRO-2) through the real CLI and collator on the session's shards
(format 2: every row records where its documents start, so attention and rotary positions stay inside a
document). fp32 and bf16 both learn; the fp32 run resumes bit-identically after a SIGKILL. The export of a
trained ModernBERT is tested in test_modernbert_export.py."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers.processes import sigkill_then_resume
from tests.helpers.runs import run_pretrain_configs, step_trace, write_config

pytestmark = pytest.mark.integration

MAX_STEPS = 8
SETTINGS = {
    # local_attention 16 < the shards' 64 tokens: the local layers' window really binds.
    "model": {"arch": "modernbert", "preset": "tiny", "local_attention": 16, "compile": False},
    "masking": {"probability": 0.3},
    "train": {"max_steps": MAX_STEPS, "grad_accum_steps": 1},
    "optim": {"lr": 2e-3, "warmup_steps": 2},
    "checkpoint": {"every_steps": 2, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
}


def settings(precision: str) -> dict:
    return {**SETTINGS, "precision": precision}


@pytest.fixture(scope="module")
def baselines(tiny_shards, tmp_path_factory):
    """{precision: run} of one uninterrupted 2-rank run each, on one torchrun launch (one start-up)."""
    configs = {
        p: write_config(tmp_path_factory.mktemp(f"modernbert-{p}"), tiny_shards, **settings(p))
        for p in ("fp32", "bf16")
    }
    runs = run_pretrain_configs(list(configs.values()))
    for run in runs:
        assert run.returncode == 0, run.output[-3000:]
    return dict(zip(configs, runs, strict=True))


def assert_loss_falls(run) -> None:
    losses = run.step_losses()
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (6, 7, 8)) / 3
    assert last < first - 0.3, f"training loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_ranks_of_modernbert_tiny_learn_on_packed_documents(baselines, precision):
    run = baselines[precision]
    assert_loss_falls(run)
    record = json.loads((run.run_dir / "checkpoints" / "step-00000008" / "COMPLETE.json").read_text())
    identity = record["identity"]
    assert identity["model.arch"] == "modernbert" and record["world_size"] == 2, identity
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["precision"] == precision


def test_sigkill_then_resume_is_bit_identical(baselines, tiny_shards, tmp_path):
    config = write_config(tmp_path, tiny_shards, **settings("fp32"))
    run = sigkill_then_resume(config, tmp_path / "run", MAX_STEPS)
    assert step_trace(run.run_dir) == step_trace(baselines["fp32"].run_dir)  # losses bit for bit, same rows
