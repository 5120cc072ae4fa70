"""What a checkpoint may hold and what a resume accepts, on real DeepSpeed checkpoints (CPU, gloo, world 1):
planted and crafted pickles never run, malformed records are skipped by name, non-finite weights are never
saved, identity changes are refused in one line, and the LR follows this run's schedule after a resume."""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from pretrain.checkpoint.identity import RunDescription
from pretrain.checkpoint.manager import CheckpointError, CheckpointManager
from pretrain.checkpoint.record import write_complete_record
from pretrain.config import OptimConfig
from pretrain.runtime.lr_schedule import lr_factor
from tests.helpers.engine import init_process_group, make_engine, train_steps
from tests.helpers.environment import restored_environment


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with restored_environment():  # the LOCAL_RANK it sets outlives the per-test reset of os.environ
        init_process_group()
        yield


class PlantedPayload:
    """Unpickling this creates a marker file: proof that a load ran code from the checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


IDENTITY = {
    "model.hidden_size": 16,
    "tokenizer": "a" * 64,
    "data": "b" * 64,
    "data.seq_len": 64,
    "train.seed": 0,
}
CONFIG = {
    "run_dir": "/runs/a",
    "train": {"max_steps": 10, "seed": 0},
    "optim": {"lr": 0.01},
    "eval": {"every_steps": 5},
}


def manager(run_dir, identity=None, config=None, allow=()) -> CheckpointManager:
    ckpt_cfg = SimpleNamespace(every_steps=1, every_minutes=None, keep_last=10, keep_every=None)
    run = RunDescription(identity=identity or IDENTITY, config=config or CONFIG, allow_changed=tuple(allow))
    return CheckpointManager(str(run_dir), ckpt_cfg, rank=0, world_size=1, config_hash="abc", run=run)


def saved(tmp_path, stage: int = 0, steps: int = 2, dtype: str = "fp32"):
    """(engine, checkpoints dir) after one checkpoint per step for `steps` steps."""
    engine = make_engine(stage, dtype=dtype)
    mgr = manager(tmp_path)
    for step in range(1, steps + 1):
        train_steps(engine, step - 1, 1)
        mgr.save(engine, {"step": step}, step)
    return engine, tmp_path / "checkpoints"


def rewrite_record(tag_dir, **fields) -> None:
    """Rewrite COMPLETE.json over the directory as it is now (checksums match again), keeping its identity."""
    record = json.loads((tag_dir / "COMPLETE.json").read_text())
    write_complete_record(
        str(tag_dir),
        step=record["step"],
        world_size=1,
        config_hash="abc",
        identity=record["identity"],
        **fields,
    )


def test_unlisted_planted_pickle_is_refused_by_name_and_never_loaded(tmp_path, caplog):
    _, ckpt_dir = saved(tmp_path)
    marker = tmp_path / "PWNED"
    planted = ckpt_dir / "step-00000002" / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    torch.save(PlantedPayload(str(marker)), planted)  # COMPLETE.json untouched: it validated before
    with caplog.at_level(logging.WARNING):
        assert manager(tmp_path).resume(make_engine(), "auto")["step"] == 1
    assert f"skipping checkpoint step-00000002: {planted} is not listed in COMPLETE.json" in caplog.text
    with pytest.raises(CheckpointError, match=f"{planted} is not listed in COMPLETE.json"):
        manager(tmp_path).resume(make_engine(), str(planted.parent))
    os.symlink("/etc/passwd", ckpt_dir / "step-00000001" / "rng" / "extra")
    with pytest.raises(CheckpointError, match="rng/extra is a symlink"):
        manager(tmp_path).resume(make_engine(), str(ckpt_dir / "step-00000001"))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("stage", "dtype", "victim"),
    [
        (0, "bf16", "mp_rank_00_model_states.pt"),
        (2, "fp32", "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        (3, "fp32", "zero_pp_rank_0_mp_rank_00_model_states.pt"),
    ],
)
def test_listed_deepspeed_file_that_is_a_crafted_pickle_never_runs(tmp_path, stage, dtype, victim):
    _, ckpt_dir = saved(tmp_path, stage, steps=1, dtype=dtype)
    tag_dir = ckpt_dir / "step-00000001"
    marker = tmp_path / "PWNED"
    torch.save({"module": PlantedPayload(str(marker)), "optimizer_state_dict": {}}, tag_dir / victim)
    rewrite_record(tag_dir)  # the record now vouches for the crafted file: only weights_only stops it
    with pytest.raises(CheckpointError, match=f"{tag_dir / victim} is not a plain tensor file") as e:
        manager(tmp_path).resume(make_engine(stage, dtype=dtype), "auto")
    assert "\n" not in str(e.value)
    assert not marker.exists()


def _mutate(record: dict, how: str) -> object:
    files = record["files"]
    first = next(iter(files))
    return {
        "files empty": {**record, "files": {}},
        "files a list": {**record, "files": list(files)},
        "entry a list": {**record, "files": {**files, first: [1, 2]}},
        "bytes a string": {**record, "files": {**files, first: {**files[first], "bytes": "12"}}},
        "step a string": {**record, "step": "2"},
        "path escapes": {**record, "files": {**files, "../step-00000001/trainer_state.json": files[first]}},
        "record a list": [record],
        "rng not listed": {**record, "files": {k: v for k, v in files.items() if not k.startswith("rng/")}},
    }[how]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("files empty", "'files' is {}"),
        ("files a list", "'files' is"),
        ("entry a list", "the entry of"),
        ("bytes a string", "the entry of"),
        ("step a string", "'step' is '2'"),
        ("path escapes", "not a plain path inside"),
        ("record a list", "not an object"),
        ("rng not listed", "does not list rng/rank-00000.json"),
    ],
)
def test_a_malformed_record_skips_only_that_checkpoint_by_name(tmp_path, caplog, how, message):
    _, ckpt_dir = saved(tmp_path)
    record_path = ckpt_dir / "step-00000002" / "COMPLETE.json"
    record_path.write_text(json.dumps(_mutate(json.loads(record_path.read_text()), how)))
    with caplog.at_level(logging.WARNING):
        assert manager(tmp_path).resume(make_engine(), "auto")["step"] == 1
    assert "skipping checkpoint step-00000002" in caplog.text and message in caplog.text
    with pytest.raises(CheckpointError, match=str(record_path)):
        manager(tmp_path).resume(make_engine(), str(record_path.parent))


def _poison_first(tensors) -> None:
    next(iter(tensors)).data.view(-1)[0] = float("nan")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_no_checkpoint_is_written_from_non_finite_weights(tmp_path, dtype):
    engine, ckpt_dir = saved(tmp_path, steps=1, dtype=dtype)
    if dtype == "fp32":
        _poison_first(engine.module.parameters())
    else:  # only the fp32 master copy (what export reads) is bad; the bf16 weights are fine
        _poison_first(engine.optimizer.fp32_groups[0])
        assert all(torch.isfinite(p).all() for p in engine.module.parameters())
    with pytest.raises(CheckpointError, match="step-00000002: the weights hold NaN or Inf on this rank"):
        manager(tmp_path).save(engine, {"step": 2}, 2)
    assert not (ckpt_dir / "step-00000002").exists()
    assert (ckpt_dir / "latest").read_text().strip() == "step-00000001"


def test_identity_change_is_refused_in_one_line_before_anything_loads(tmp_path):
    saved(tmp_path, steps=1)
    changed = {**IDENTITY, "train.seed": 1, "data": "c" * 64}
    fresh = make_engine(seed=5)
    before = [p.detach().clone() for p in fresh.module.parameters()]
    with pytest.raises(CheckpointError) as e:
        manager(tmp_path, identity=changed).resume(fresh, "auto")
    message = str(e.value)
    assert "\n" not in message and "step-00000001" in message
    assert "data (build identity) bbbbbbbbbbbb -> cccccccccccc" in message and "train.seed 0 -> 1" in message
    assert "train.resume_allow_changed=[data,seed]" in message
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.module.parameters(), strict=True))
    with pytest.raises(CheckpointError, match=r"allow_changed=\[seed\]"):
        manager(tmp_path, identity=changed, allow=["data"]).resume(make_engine(), "auto")
    assert (
        manager(tmp_path, identity=changed, allow=["data", "seed"]).resume(make_engine(), "auto")["step"] == 1
    )


def test_harmless_config_changes_pass_silently_and_real_ones_are_named(tmp_path, caplog):
    saved(tmp_path, steps=1)
    harmless = {
        **CONFIG,
        "run_dir": "/runs/b",
        "train": {"max_steps": 99, "seed": 0},
        "eval": {"every_steps": 7},
    }
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint.manager"):
        manager(tmp_path, config=harmless).resume(make_engine(), "auto")
    assert caplog.records == []
    real = {**CONFIG, "optim": {"lr": 0.02}}
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint.manager"):
        manager(tmp_path, config=real).resume(make_engine(), "auto")
    assert [r.getMessage() for r in caplog.records] == [
        f"resuming {tmp_path}/checkpoints/step-00000001 with changed settings: optim.lr 0.01 -> 0.02"
    ]


@pytest.mark.parametrize("stage", [0, 2])
def test_a_raised_max_steps_takes_effect_at_the_resumed_step(tmp_path, caplog, stage):
    optim = OptimConfig(lr=1e-2, warmup_steps=1, schedule="linear")
    engine = make_engine(stage, schedule=lambda s: lr_factor(s, optim, 3))
    train_steps(engine, 0, 3)
    assert engine.get_lr()[0] == 0.0  # the finished schedule's last rate
    manager(tmp_path).save(engine, {"step": 3}, 3)

    longer = make_engine(stage, schedule=lambda s: lr_factor(s, optim, 6))
    with caplog.at_level(logging.INFO, logger="pretrain.runtime.engine_state"):
        manager(tmp_path).resume(longer, "auto")
    expected = 1e-2 * lr_factor(3, optim, 6)
    assert expected > 0 and longer.get_lr() == [pytest.approx(expected, rel=1e-12)]
    assert "learning rate at the resumed update 3: 0 from the checkpoint's schedule -> 0.006" in caplog.text
    train_steps(longer, 3, 1)  # the schedule goes on from there
    assert longer.get_lr() == [pytest.approx(1e-2 * lr_factor(4, optim, 6), rel=1e-12)]


def test_another_architecture_is_a_model_change_and_old_records_are_bert():
    from pretrain.checkpoint.identity import check_resume_identity

    before_registry = dict(IDENTITY)  # a record saved before identities named the architecture
    assert check_resume_identity("ckpt", before_registry, {**IDENTITY, "model.arch": "bert"}, ()) == []
    with pytest.raises(CheckpointError, match=r"model.arch 'bert' -> 'other'.*allow_changed=\[model\]"):
        check_resume_identity("ckpt", before_registry, {**IDENTITY, "model.arch": "other"}, ())


def test_a_checkpoint_config_that_is_a_yaml_alias_bomb_is_refused_by_name(tmp_path):
    # The saved config.yaml is read with the config loader's bounds: a listed, checksummed alias bomb
    # is refused in one line instead of expanding to 9^9 strings.
    _, checkpoints = saved(tmp_path, steps=1)
    tag = checkpoints / "step-00000001"
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [{', '.join(['*' + previous] * 9)}]\n"
    (tag / "config.yaml").write_text(bomb)
    rewrite_record(tag)
    with pytest.raises(CheckpointError, match=r"config.yaml: .*alias.*the checkpoint is unusable"):
        manager(tmp_path).resume(make_engine(), "auto")
