"""What a save removes (issue 20, item 8), on real DeepSpeed checkpoints (CPU, gloo, world 1): only a dir a
save of ours left half-written (its .TAG.saving marker still there) is deleted; a dir holding a user's files,
or a complete checkpoint that fails validation, is moved to checkpoints/.rejected/, never deleted."""

from __future__ import annotations

import logging
import os

import pytest

from pretrain.checkpoint.manager import REJECTED_DIR, saving_marker
from tests.helpers.engine import init_process_group, make_engine, train_steps
from tests.helpers.environment import restored_environment
from tests.pretrain.checkpoint.test_trust import manager


@pytest.fixture(scope="module", autouse=True)
def process_group():
    with restored_environment():  # the LOCAL_RANK it sets outlives the per-test reset of os.environ
        init_process_group()
        yield


def test_a_save_deletes_only_what_a_save_of_ours_left_half_written(tmp_path, caplog):
    engine = make_engine(0)
    mgr = manager(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    train_steps(engine, 0, 1)
    mgr.save(engine, {"step": 1}, 1)
    assert not os.path.exists(saving_marker(str(ckpt_dir), "step-00000001"))  # committed: marker gone

    # a user's notes where step 2 will be saved; a complete step 3 that fails validation (a planted file)
    (ckpt_dir / "step-00000002").mkdir()
    (ckpt_dir / "step-00000002" / "notes.txt").write_text("mine")
    train_steps(engine, 1, 2)
    mgr.save(engine, {"step": 3}, 3)
    (ckpt_dir / "step-00000003" / "extra.bin").write_bytes(b"x")
    # a save of ours interrupted at step 4: its marker is still there
    (ckpt_dir / "step-00000004").mkdir()
    (ckpt_dir / "step-00000004" / "half.pt").write_bytes(b"half")
    open(saving_marker(str(ckpt_dir), "step-00000004"), "w").close()

    with caplog.at_level(logging.WARNING):
        for step in (2, 3, 4):
            mgr.save(engine, {"step": step}, step)
    rejected = sorted(os.listdir(ckpt_dir / REJECTED_DIR))
    assert [name.split("-2")[0] for name in rejected] == ["step-00000002", "step-00000003"]
    by_tag = {name.rsplit("-", 1)[0]: ckpt_dir / REJECTED_DIR / name for name in rejected}
    assert (by_tag["step-00000002"] / "notes.txt").read_text() == "mine"
    assert (by_tag["step-00000003"] / "extra.bin").exists()
    assert (by_tag["step-00000003"] / "COMPLETE.json").exists()
    assert "moved" in caplog.text and "removed" in caplog.text and "never committed" in caplog.text
    for step in (2, 3, 4):  # each now a valid checkpoint of ours
        assert (ckpt_dir / f"step-0000000{step}" / "COMPLETE.json").exists()
        assert not os.path.exists(saving_marker(str(ckpt_dir), f"step-0000000{step}"))
    assert not (ckpt_dir / "step-00000004" / "half.pt").exists()
    assert mgr.resume(make_engine(0), "auto")["step"] == 4  # .rejected/ is not scanned


def test_prune_moves_an_old_foreign_dir_aside(tmp_path):
    engine = make_engine(0)
    mgr = manager(tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "step-00000001").mkdir(parents=True)
    (ckpt_dir / "step-00000001" / "data.txt").write_text("a user's")
    train_steps(engine, 0, 2)
    mgr.save(engine, {"step": 2}, 2)
    assert not (ckpt_dir / "step-00000001").exists()
    (moved,) = os.listdir(ckpt_dir / REJECTED_DIR)
    assert (ckpt_dir / REJECTED_DIR / moved / "data.txt").read_text() == "a user's"
