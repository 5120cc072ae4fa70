"""The LR schedule's shapes: wsd (warmup, stable, decay of a chosen shape and length) and the segments
phases start (pretrain/config/phases.py lr_segments, pretrain/runtime/lr_schedule.py)."""

from __future__ import annotations

import math

import pytest

from pretrain.config import ConfigError, check_trainable, config_from_dict
from pretrain.config.phases import lr_segments, phase_configs
from pretrain.runtime.lr_schedule import lr_factor, phased_schedule


def make_cfg(optim=None, phases=(), max_steps=100):
    return config_from_dict(
        {
            "run_dir": "r",
            "data": {"path": "d"},
            "train": {"max_steps": max_steps},
            "optim": {"lr": 1e-3, **(optim or {})},
            "phases": list(phases),
        }
    )


@pytest.mark.parametrize(
    ("shape", "mid"),
    [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))],
)
def test_wsd_warms_up_holds_then_decays_over_its_last_steps(shape, mid):
    o = make_cfg({"schedule": "wsd", "warmup_steps": 10, "decay_steps": 20, "decay_shape": shape}).optim
    factors = [lr_factor(s, o, 100) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert set(factors[10:81]) == {1.0}  # stable up to the decay's first step (step 80)
    assert factors[90] == pytest.approx(mid) and factors[100] == 0.0
    assert all(b <= a for a, b in zip(factors[80:], factors[81:], strict=False))


def test_wsd_decay_fraction_and_its_default_and_min_lr():
    fraction = make_cfg({"schedule": "wsd", "decay_fraction": 0.25, "min_lr_ratio": 0.1}).optim
    assert lr_factor(74, fraction, 100) == 1.0 and lr_factor(76, fraction, 100) < 1.0
    assert lr_factor(100, fraction, 100) == pytest.approx(0.1)
    default = make_cfg({"schedule": "wsd"}).optim  # 10% of the segment
    assert lr_factor(89, default, 100) == 1.0 and lr_factor(91, default, 100) < 1.0


def test_a_decay_branch_follows_the_stable_run_up_to_its_start():
    """'Decay from here': the branch (max_steps = checkpoint step + decay_steps) has the stable run's LR
    at every step up to the checkpoint, so a resume from it continues without a jump."""
    stable = make_cfg({"schedule": "wsd", "warmup_steps": 10, "decay_steps": 1000}, max_steps=10_000).optim
    branch = make_cfg({"schedule": "wsd", "warmup_steps": 10, "decay_steps": 40}, max_steps=440).optim
    assert [lr_factor(s, stable, 10_000) for s in range(401)] == [
        lr_factor(s, branch, 440) for s in range(401)
    ]
    assert lr_factor(420, branch, 440) == pytest.approx(0.5) and lr_factor(440, branch, 440) == 0.0


@pytest.mark.parametrize(
    ("optim", "message"),
    [
        ({"decay_steps": 5}, "optim.decay_steps is for optim.schedule=wsd, not linear"),
        ({"schedule": "wsd", "decay_steps": 5, "decay_fraction": 0.1}, "both set; set one of them"),
        ({"schedule": "wsd", "decay_fraction": 1.5}, r"optim.decay_fraction must be in \(0, 1\]"),
        ({"schedule": "wsd", "decay_shape": "sqrt"}, "optim.decay_shape: expected one of"),
    ],
)
def test_bad_wsd_keys_are_refused_by_name(optim, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(optim)


def test_wsd_warmup_plus_decay_longer_than_the_run_is_refused_for_training():
    cfg = make_cfg({"schedule": "wsd", "warmup_steps": 60, "decay_steps": 50})
    with pytest.raises(ConfigError, match=r"run.yaml: optim: warmup_steps \(60\) \+ the wsd decay \(50"):
        check_trainable(cfg, "run.yaml")


def test_a_phase_with_optim_keys_starts_a_new_segment_the_others_continue_it():
    cfg = make_cfg(
        {"warmup_steps": 10, "schedule": "linear"},
        phases=[
            {"start_step": 30, "masking": {"probability": 0.3}},  # no optim: the base segment goes on
            {"start_step": 60, "optim": {"lr": 5e-4, "warmup_steps": 5, "schedule": "constant"}},
        ],
    )
    segments = lr_segments(cfg, phase_configs(cfg))
    assert [(s.start, s.end, s.scale) for s in segments] == [(0, 60, 1.0), (60, 100, 0.5)]
    schedule = phased_schedule(segments)
    assert schedule(30) == lr_factor(30, cfg.optim, 60)  # the masking phase keeps the base's decay
    assert schedule(59) == pytest.approx(1 / 50)
    assert schedule(60) == pytest.approx(0.5 * 1 / 5) and schedule(64) == 0.5 and schedule(99) == 0.5


def test_a_phase_warmup_longer_than_its_segment_is_refused_naming_the_phase():
    cfg = make_cfg(phases=[{"start_step": 90, "optim": {"warmup_steps": 20}}])
    with pytest.raises(
        ConfigError, match=r"phases\[0\].optim.warmup_steps \(20\) is larger than its LR segment"
    ):
        check_trainable(cfg)
