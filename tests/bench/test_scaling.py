"""bench/scaling.py, the calculator behind docs/scaling.md: its formulas keep the ZeRO paper's relations and
the script regenerates the doc's tables from the shipped configs."""

from __future__ import annotations

import pytest

from bench import scaling

P = 110_000_000


@pytest.mark.parametrize("gpus", [8, 64, 512])
def test_zero_volumes_follow_the_zero_paper(gpus):
    dp = scaling.step_bytes_per_gpu(0, P, gpus)
    assert dp == pytest.approx(2 * (gpus - 1) / gpus * 2 * P)  # ring all-reduce of 16-bit gradients
    assert scaling.step_bytes_per_gpu(1, P, gpus) == dp == scaling.step_bytes_per_gpu(2, P, gpus)
    assert scaling.step_bytes_per_gpu(3, P, gpus) == pytest.approx(1.5 * dp)
    # Accumulation: stage 1 reduces once per step, stages 2 and 3 once per micro-batch.
    assert scaling.step_bytes_per_gpu(1, P, gpus, accum=4) == dp
    assert scaling.step_bytes_per_gpu(2, P, gpus, accum=4) == pytest.approx(2.5 * dp)
    assert scaling.step_bytes_per_gpu(3, P, gpus, accum=4) == pytest.approx(6 * dp)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_checkpoint_is_16_bit_weights_plus_fp32_adam_state_on_every_stage(stage):
    total, rank0, node0 = scaling.checkpoint_bytes(stage, P, 64)
    assert total == 14 * P
    assert rank0 <= node0 <= total
    if stage == 3:
        assert rank0 * 64 == pytest.approx(total)


def test_the_script_prints_every_table_from_the_shipped_configs(capsys):
    assert scaling.main([]) == 0
    out = capsys.readouterr().out
    for name in ("BERT-base", "BERT-large"):
        assert f"{name}: " in out and "parameters (vocabulary 30522" in out
    assert "| BERT-large | 3 | 512 (64) |" in out and "1 TiB of text" in out
