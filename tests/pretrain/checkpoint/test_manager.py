"""CheckpointManager on a real DeepSpeed engine (CPU, gloo, world 1): exact resume, validation, pruning."""

from __future__ import annotations

import json
import logging
import os
import pickle
import resource
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pretrain.checkpoint.manager import CheckpointError, CheckpointManager, find_newest_valid
from pretrain.checkpoint.record import load_state, save_state, write_complete_record
from tests.helpers import free_port
from tests.helpers.engine import init_process_group, make_engine, train_steps
from tests.helpers.environment import restored_environment


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with restored_environment():  # the LOCAL_RANK it sets outlives the per-test reset of os.environ
        init_process_group()
        yield


def cfg(**kw):
    base = {"every_steps": 2, "every_minutes": None, "keep_last": 10, "keep_every": None}
    return SimpleNamespace(**{**base, **kw})


def manager(run_dir, **kw) -> CheckpointManager:
    return CheckpointManager(str(run_dir), cfg(**kw), rank=0, world_size=1, config_hash="abc")


def state_for(step: int) -> dict:
    return {"step": step, "sampler": {"epoch": 0, "consumed_samples": 4 * step}, "loss_sum": 0.1 + step}


@pytest.mark.parametrize(("stage", "dtype"), [(0, "fp32"), (2, "bf16"), (3, "fp32")])
def test_resume_continues_bit_identically(tmp_path, stage, dtype):
    engine = make_engine(stage, dtype=dtype)
    train_steps(engine, 0, 3)
    manager(tmp_path).save(engine, state_for(3), 3)
    expected = train_steps(engine, 3, 3)

    fresh = make_engine(stage, seed=123, dtype=dtype)  # other init: everything must come from the checkpoint
    torch.manual_seed(999)  # other RNG: dropout masks must come from the checkpoint too
    state = manager(tmp_path).resume(fresh, "auto")
    assert state["step"] == 3 and state["sampler"] == {"epoch": 0, "consumed_samples": 12}
    assert train_steps(fresh, 3, 3) == expected


def test_layout_record_and_latest(tmp_path):
    engine = make_engine()
    train_steps(engine, 0, 1)
    tag_dir = manager(tmp_path).save(engine, state_for(1), 1)
    ckpt_dir = tmp_path / "checkpoints"
    assert tag_dir == str(ckpt_dir / "step-00000001")
    assert (ckpt_dir / "latest").read_text().strip() == "step-00000001"
    record = json.loads((ckpt_dir / "step-00000001" / "COMPLETE.json").read_text())
    assert record["step"] == 1 and record["world_size"] == 1 and record["config_hash"] == "abc"
    on_disk = {
        str(p.relative_to(tag_dir)) for p in (ckpt_dir / "step-00000001").rglob("*") if p.is_file()
    } - {"COMPLETE.json"}
    assert set(record["files"]) == on_disk
    assert {"trainer_state.json", "rng/rank-00000.json"} <= on_disk
    assert not any(n.endswith(".tmp") or ".tmp-" in n for n in os.listdir(ckpt_dir))


def saved_twice(tmp_path):
    engine = make_engine()
    mgr = manager(tmp_path)
    for step in (1, 2):
        train_steps(engine, step - 1, 1)
        mgr.save(engine, state_for(step), step)
    return engine, tmp_path / "checkpoints"


def test_flipped_byte_is_refused_by_name_and_previous_used(tmp_path, caplog):
    _, ckpt_dir = saved_twice(tmp_path)
    victim = next(p for p in (ckpt_dir / "step-00000002").rglob("*model_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        state = manager(tmp_path).resume(make_engine(), "auto")
    assert state["step"] == 1
    assert str(victim) in caplog.text and "sha256" in caplog.text
    with pytest.raises(CheckpointError, match=str(victim)):
        manager(tmp_path).resume(make_engine(), str(ckpt_dir / "step-00000002"))


def test_truncated_file_is_refused_by_name(tmp_path):
    _, ckpt_dir = saved_twice(tmp_path)
    victim = ckpt_dir / "step-00000002" / "trainer_state.json"
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=f"{victim}.*truncated"):
        manager(tmp_path).resume(make_engine(), str(ckpt_dir / "step-00000002"))
    assert find_newest_valid(str(ckpt_dir))[1]["step"] == 1


def test_missing_or_dangling_latest_falls_back_to_scan(tmp_path, caplog):
    _, ckpt_dir = saved_twice(tmp_path)
    (ckpt_dir / "latest").unlink()
    assert manager(tmp_path).resume(make_engine(), "auto")["step"] == 2
    (ckpt_dir / "latest").write_text("step-00000009\n")
    with caplog.at_level(logging.WARNING):
        assert manager(tmp_path).resume(make_engine(), "auto")["step"] == 2
    assert "step-00000009" in caplog.text


def test_incomplete_newest_is_never_loaded(tmp_path, caplog):
    _, ckpt_dir = saved_twice(tmp_path)
    (ckpt_dir / "step-00000002" / "COMPLETE.json").unlink()  # what a kill before the commit leaves
    (ckpt_dir / "latest").write_text("step-00000002\n")
    with caplog.at_level(logging.WARNING):
        assert manager(tmp_path).resume(make_engine(), "auto")["step"] == 1
    assert "interrupted" in caplog.text
    # the next save of step 2 replaces the leftover instead of trusting it
    engine = make_engine()
    manager(tmp_path).save(engine, state_for(2), 2)
    assert find_newest_valid(str(ckpt_dir))[1]["step"] == 2


def test_fresh_start_and_explicit_bad_paths(tmp_path):
    assert manager(tmp_path).resume(make_engine(), "auto") is None
    assert manager(tmp_path).resume(make_engine(), "none") is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        manager(tmp_path).resume(make_engine(), str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no complete, valid checkpoint"):
        manager(tmp_path).resume(make_engine(), str(tmp_path / "empty"))


class PlantedPayload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_in_state_file_is_refused(tmp_path):
    _, ckpt_dir = saved_twice(tmp_path)
    tag_dir = ckpt_dir / "step-00000002"
    marker = tmp_path / "PWNED"
    (tag_dir / "rng" / "rank-00000.safetensors").write_bytes(pickle.dumps(PlantedPayload(str(marker))))
    write_complete_record(str(tag_dir), step=2, world_size=1, config_hash="abc")  # checksums now agree
    with pytest.raises(CheckpointError, match="rank-00000.safetensors.*not a valid safetensors"):
        manager(tmp_path).resume(make_engine(), str(tag_dir))
    assert not marker.exists()


def test_failed_write_leaves_previous_checkpoint_and_latest(tmp_path):
    engine, ckpt_dir = saved_twice(tmp_path)
    before = (ckpt_dir / "latest").read_text()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))  # files beyond 512 bytes: EFBIG, like a full disk
    try:
        with pytest.raises(CheckpointError, match="step-00000003.*unchanged"):
            manager(tmp_path).save(engine, state_for(3), 3)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (ckpt_dir / "latest").read_text() == before
    assert not (ckpt_dir / "step-00000003").exists()
    assert find_newest_valid(str(ckpt_dir))[1]["step"] == 2


def test_prune_keeps_last_k_and_every_mth(tmp_path):
    engine = make_engine()
    mgr = manager(tmp_path, keep_last=2, keep_every=3)
    for step in range(1, 8):
        train_steps(engine, step - 1, 1)
        mgr.save(engine, state_for(step), step)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "latest",
        "step-00000003",
        "step-00000006",
        "step-00000007",
    ]


def test_should_save_steps_and_minutes(tmp_path):
    mgr = manager(tmp_path, every_steps=5, every_minutes=1.0)
    t0 = mgr._last_save_time
    assert mgr.should_save(10, now=t0) and not mgr.should_save(11, now=t0 + 59)
    assert mgr.should_save(11, now=t0 + 61)
    assert not manager(tmp_path, every_steps=None).should_save(10)


def test_state_round_trip_is_exact(tmp_path):
    state = {
        "floats": [0.1, 1 / 3, float("1e-300")],
        "pair": (1, "a", None),
        "array": np.arange(5, dtype=np.uint32) * 4000000000 // 5,
        "tensor": torch.randn(3, dtype=torch.float64),
        "nested": {"ints": [1, 2, 3], "bool": True},
    }
    save_state(state, str(tmp_path), "s")
    back = load_state(str(tmp_path), "s")
    assert back["floats"] == state["floats"] and back["pair"] == state["pair"]
    assert back["array"].dtype == np.uint32 and (back["array"] == state["array"]).all()
    assert torch.equal(back["tensor"], state["tensor"]) and back["nested"] == state["nested"]
    with pytest.raises(TypeError, match="state.bad"):
        save_state({"bad": object()}, str(tmp_path), "t")


def _two_rank_run(rank: int, port: int, run_dir: str, stage: int, dtype: str, results) -> None:
    init_process_group(rank, 2, port)
    engine = make_engine(stage, dtype=dtype, world_size=2, dropout=0.0)
    train_steps(engine, 0, 2, rank, 2)
    mgr = CheckpointManager(run_dir, cfg(), rank=rank, world_size=2, config_hash="abc")
    mgr.save(engine, state_for(2), 2)
    results[rank] = train_steps(engine, 2, 3, rank, 2)
    if rank == 1:  # a NaN in rank 1's fp32 master partition only: no rank may save step 5
        for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            for flat in getattr(engine.optimizer, attr, None) or []:
                flat.data[0] = float("nan")
    try:
        mgr.save(engine, state_for(5), 5)
        results[f"refused{rank}"] = None
    except CheckpointError as e:
        results[f"refused{rank}"] = str(e)


@pytest.mark.parametrize(("stage", "dtype"), [(2, "fp32"), (3, "bf16")])
def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path, stage, dtype):
    """2 -> 1 ranks, same global batch: ZeRO partitions re-cut through a universal checkpoint. Before that,
    a NaN in one rank's partition stops both ranks from saving."""
    results = mp.Manager().dict()
    mp.spawn(_two_rank_run, args=(free_port(), str(tmp_path), stage, dtype, results), nprocs=2, join=True)
    uninterrupted = [(a + b) / 2 for a, b in zip(results[0], results[1], strict=True)]  # equal halves
    assert "NaN or Inf on another rank" in results["refused0"] and "on this rank" in results["refused1"]
    assert not (tmp_path / "checkpoints" / "step-00000005").exists()

    engine = make_engine(stage, seed=7, dtype=dtype, dropout=0.0)
    state = manager(tmp_path).resume(engine, "auto")
    assert state["saved_world_size"] == 2 and state["sampler"]["consumed_samples"] == 8
    resumed = train_steps(engine, 2, 3)
    drift = max(abs(a - b) / abs(b) for a, b in zip(resumed, uninterrupted, strict=True))
    print(f"2 -> 1 rank resume, ZeRO-{stage} {dtype}: max relative loss drift {drift:.2e}")
    assert drift < (1e-5 if dtype == "fp32" else 2e-2)
    assert not (tmp_path / "checkpoints" / ".universal").exists()
