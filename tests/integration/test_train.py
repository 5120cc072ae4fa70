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


def test_format_1_shards_train_bert_as_before_and_format_2_trains_it_isolated(tiny_shards, tmp_path):
    # One launch, three short runs: BERT on the shards as built (format 2), on the same shards written as
    # format 1 (no doc_start: what a user's existing shards hold), and with model.document_isolation.
    from tests.helpers.runs import run_pretrain_configs
    from tests.helpers.shard_formats import format_1_copy

    old = format_1_copy(tiny_shards, tmp_path / "old-shards")
    settings = {
        "train": {"max_steps": 2, "grad_accum_steps": 1},
        "optim": {"warmup_steps": 1},
        "eval": {"max_batches": 1},
    }
    configs = []
    for name, shards, model in (
        ("new", tiny_shards, {}),
        ("old", old, {}),
        ("isolated", tiny_shards, {"document_isolation": True}),
    ):
        (tmp_path / name).mkdir()
        configs.append(write_config(tmp_path / name, shards, model={"preset": "tiny", **model}, **settings))
    new, old_run, isolated = run_pretrain_configs(configs, ranks=1)
    for run in (new, old_run, isolated):
        assert run.returncode == 0, run.output[-3000:]
    assert sorted(new.step_losses()) == [1, 2]
    assert old_run.step_losses() == new.step_losses()  # bit for bit: the same rows, masks and model
    without_time = lambda run: [{k: v for k, v in e.items() if k != "time"} for e in run.evals()]  # noqa: E731
    assert without_time(old_run) == without_time(new) and len(without_time(new)) == 2
    # (Most rows of this corpus hold one document, so its losses may equal the plain run's: what isolation
    # computes is tested in tests/pretrain/models/test_bert_documents.py.)
    assert sorted(isolated.step_losses()) == [1, 2]
    assert all(math.isfinite(loss) for loss in isolated.step_losses().values())
    record = json.loads((isolated.run_dir / "checkpoints" / "step-00000002" / "COMPLETE.json").read_text())
    assert record["identity"]["model.document_isolation"] is True
