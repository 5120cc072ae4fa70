"""What a resume compares of a run's phases (a digest per started phase) and what it ignores (the runs
a decay branch continued from)."""

from __future__ import annotations

import pytest

from pretrain.checkpoint.identity import check_resume_identity
from pretrain.checkpoint.record import CheckpointError

BASE = {"model.arch": "bert", "tokenizer": "t" * 64, "data.seq_len": 128, "train.seed": 0}


def test_a_changed_phase_that_had_started_is_refused_by_name():
    saved = {**BASE, "phases": ["a" * 64]}
    current = {**BASE, "phases": ["b" * 64, "c" * 64]}
    with pytest.raises(
        CheckpointError,
        match=r"started\) \[aaaaaaaaaaaa\] -> \[bbbbbbbbbbbb\]\); set train.resume_allow_changed=\[phases\]",
    ):
        check_resume_identity("ckpt", saved, current, allowed=())
    assert check_resume_identity("ckpt", saved, current, allowed=("phases",))


def test_phases_not_started_at_the_checkpoint_may_change_or_be_added():
    assert (
        check_resume_identity(
            "ckpt", {**BASE, "phases": ["a" * 64]}, {**BASE, "phases": ["a" * 64, "z" * 64]}, ()
        )
        == []
    )
    assert check_resume_identity("ckpt", {**BASE, "phases": []}, {**BASE, "phases": ["z" * 64]}, ()) == []
    assert check_resume_identity("ckpt", BASE, {**BASE, "phases": ["z" * 64]}, ()) == []  # phases added


def test_the_runs_a_branch_continued_from_are_recorded_not_compared():
    branched = {
        **BASE,
        "branched_from": [{"checkpoint": "/runs/stable/checkpoints/step-00040000", "step": 40000}],
    }
    assert check_resume_identity("ckpt", branched, BASE, allowed=()) == []
