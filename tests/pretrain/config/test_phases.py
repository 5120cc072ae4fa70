"""Phases in the config: partial sections merged over the phase before, checked by the typed builder;
the order they are entered in; which phases start a new sample stream; batch warmup's ramp."""

from __future__ import annotations

import pytest

from pretrain.config import ConfigError, config_from_dict
from pretrain.config.phases import due_phase, phase_configs, stream_of


def make_cfg(phases, **sections):
    raw = {"run_dir": "r", "data": {"path": "d"}, "train": {"max_steps": 100}, "phases": phases}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw, source="run.yaml")


def test_each_phase_is_the_one_before_it_with_its_keys_replaced():
    cfg = make_cfg(
        [
            {"start_step": 10, "data": {"path": "d512", "seq_len": 512}},
            {"start_step": 20, "masking": {"probability": 0.05}, "train": {"micro_batch_size": 8}},
        ],
        masking={"probability": 0.3, "whole_word": True},
    )
    base, long, late = phase_configs(cfg)
    assert (base.data.path, base.data.seq_len, base.masking.probability) == ("d", None, 0.3)
    assert (long.data.path, long.data.seq_len, long.masking.probability) == ("d512", 512, 0.3)
    assert (late.data.path, late.masking.probability, late.masking.whole_word) == ("d512", 0.05, True)
    assert late.train.micro_batch_size == 8 and long.train.micro_batch_size == 32
    assert not base.phases and late.train.max_steps == 100


def test_a_run_without_phases_is_its_own_only_phase():
    cfg = make_cfg([])
    assert phase_configs(cfg) == [cfg] and due_phase(cfg, 0, 10**9, 10**12) == 0


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ({"masking": {"probability": 0.1}}, r"phases\[0\]: a phase needs one of start_step or start_tokens"),
        (
            {"start_step": 5, "start_tokens": 9},
            r"phases\[0\]: a phase needs one of start_step or start_tokens",
        ),
        ({"start_step": 0}, r"phases\[0\]: a phase's start must be >= 1"),
        ({"start_step": 5, "masking": {"probability": 1.5}}, r"phases\[0\]: masking.probability must be in"),
        ({"start_step": 5, "masking": {"probabilty": 0.1}}, r"did you mean masking.probability\?"),
        ({"start_step": 5, "model": {"hidden_size": 8}}, r"unknown key phases\[0\].model"),
        ({"start_step": 5, "train": {"seed": 1}}, r"train.seed cannot change in a phase"),
        ({"start_step": 5, "optim": {"betas": [0.9, 0.98]}}, r"optim.betas cannot change in a phase"),
        ({"start_tokens": 5, "optim": {"lr": 1e-4}}, r"must start by start_step"),
        ({"start_step": 100}, r"phases\[0\].start_step=100 is not before train.max_steps=100"),
    ],
)
def test_a_bad_phase_is_refused_naming_it(phase, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_cfg([phase])
    assert str(err.value).startswith("run.yaml: ")


def test_phases_out_of_order_are_refused():
    with pytest.raises(
        ConfigError, match=r"phases\[1\].start_step=10 must be larger than the phase before it"
    ):
        make_cfg([{"start_step": 20}, {"start_step": 10}])


def test_phases_are_entered_in_order_by_steps_or_tokens():
    cfg = make_cfg([{"start_step": 10}, {"start_tokens": 5000}, {"start_step": 50}])
    assert due_phase(cfg, 0, 9, 10**6) == 0  # phase 2's tokens are reached, but phase 1 comes first
    assert due_phase(cfg, 0, 10, 10**6) == 2  # both at once
    assert due_phase(cfg, 1, 30, 4999) == 1 and due_phase(cfg, 1, 30, 5000) == 2
    assert due_phase(cfg, 2, 50, 5000) == 3 and due_phase(cfg, 3, 99, 10**9) == 3


def test_only_a_phase_that_changes_the_rows_starts_a_new_stream():
    cfg = make_cfg(
        [
            {"start_step": 10, "masking": {"probability": 0.3}},
            {"start_step": 20, "data": {"seq_len": 32}},
            {"start_step": 30, "data": {"prefetch_batches": 4}, "train": {"micro_batch_size": 4}},
        ]
    )
    configs = phase_configs(cfg)
    assert [stream_of(configs, i) for i in range(4)] == [0, 0, 2, 2]


def test_batch_warmup_ramps_in_whole_micro_batches_per_rank():
    t = make_cfg(
        [],
        train={
            "micro_batch_size": 4,
            "grad_accum_steps": 8,
            "batch_warmup_steps": 4,
            "batch_warmup_start": 8,
        },
    ).train
    assert [t.global_batch_at(s, world_size=2) for s in range(6)] == [8, 16, 32, 48, 64, 64]
    with pytest.raises(ConfigError, match=r"batch_warmup_start=8 must be a multiple of .* \(16\)"):
        t.global_batch_at(0, world_size=4)
    with pytest.raises(ConfigError, match="go together"):
        make_cfg([], train={"batch_warmup_steps": 4})
