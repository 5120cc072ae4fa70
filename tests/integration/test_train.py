"""Real 2-rank DeepSpeed ZeRO-2 runs on CPU over shards built by `mlm-data`: the loss must fall, and the
deepspeed launcher trains exactly what torchrun trains."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tests.helpers.runs import run_pretrain, write_config

pytestmark = pytest.mark.integration


def test_two_rank_zero2_run_learns_and_leaves_a_complete_run_dir(tiny_shards, tmp_path):
    config = write_config(tmp_path, tiny_shards, eval={"every_steps": 15, "max_batches": 4})
    run = run_pretrain(config, ranks=2)
    assert run.returncode == 0, run.output[-3000:]

    losses = run.step_losses()
    assert sorted(losses) == list(range(1, 31))
    first, last = sum(losses[s] for s in range(1, 4)) / 3, sum(losses[s] for s in range(28, 31)) / 3
    assert last < first - 1.0, f"training loss did not fall: {first:.3f} -> {last:.3f}"
    evals = run.evals()
    assert [e["step"] for e in evals] == [0, 15, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0
    assert math.isclose(evals[-1]["eval_perplexity"], math.exp(evals[-1]["eval_loss"]), rel_tol=1e-9)

    step = next(r for r in run.metrics if r.get("step") == 30 and "loss" in r)
    for key in ("lr", "grad_norm", "tokens_per_s", "samples_per_s", "time"):
        assert isinstance(step[key], float) and step[key] > 0, key
    assert step["lr"] < 2e-3  # linear decay after warmup
    resolved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert resolved["zero"]["stage"] == 2 and resolved["data"]["path"] == str(tiny_shards)
    latest = (run.run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-00000030"
    assert json.loads((run.run_dir / "checkpoints" / latest / "COMPLETE.json").read_text())["world_size"] == 2


def test_nsp_shards_train_the_pair_head_on_one_process(tiny_nsp_shards, tmp_path):
    config = write_config(
        tmp_path, tiny_nsp_shards, train={"max_steps": 4, "grad_accum_steps": 1}, optim={"warmup_steps": 2}
    )
    run = run_pretrain(config, ranks=1)
    assert run.returncode == 0, run.output[-3000:]
    steps = [r for r in run.metrics if "loss" in r]
    assert all(0.0 < r["pair_loss"] < r["loss"] for r in steps)
    assert 0.0 <= run.evals()[-1]["eval_pair_accuracy"] <= 1.0


def test_the_deepspeed_launcher_trains_the_same_losses_as_torchrun(tiny_shards, tmp_path):
    settings = {
        "train": {"max_steps": 4, "grad_accum_steps": 1},
        "optim": {"warmup_steps": 2},
        "eval": {"every_steps": None},
    }
    runs = {}
    for launcher in ("deepspeed", "torchrun"):
        (tmp_path / launcher).mkdir()
        config = write_config(tmp_path / launcher, tiny_shards, **settings)
        runs[launcher] = run_pretrain(config, ranks=2, launcher=launcher)
        assert runs[launcher].returncode == 0, runs[launcher].output[-3000:]
    assert sorted(runs["deepspeed"].step_losses()) == [1, 2, 3, 4]
    assert runs["deepspeed"].step_losses() == runs["torchrun"].step_losses()  # bit for bit
