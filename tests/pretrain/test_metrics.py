"""metrics.jsonl on rank 0: full-precision floats, eval records, resume truncation; MFU."""

from __future__ import annotations

import json

from pretrain.metrics import MetricsLogger, mfu


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _step(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "lr": 1e-4 / 3, "grad_norm": None, "tokens_per_s": 1234.5}


def test_jsonl_keeps_floats_bit_exact_and_writes_eval_records(tmp_path):
    logger = MetricsLogger(str(tmp_path), is_main=True, max_steps=3, log_every_steps=1, tensorboard=True)
    loss = 0.1 + 0.2  # 0.30000000000000004: any rounding would lose the last bits
    logger.log_step(_step(1, loss))
    logger.log_eval(
        {"step": 1, "eval_loss": 2.0 / 3, "eval_accuracy": 0.25, "eval_perplexity": 1.9477340410546757}
    )
    logger.close()
    first, second = _records(tmp_path / "metrics.jsonl")
    assert first["loss"] == loss and first["lr"] == 1e-4 / 3 and first["grad_norm"] is None
    assert first["step"] == 1 and isinstance(first["time"], float)
    assert second["eval_loss"] == 2.0 / 3 and "loss" not in second
    assert any((tmp_path / "tensorboard").iterdir())


def test_only_rank_zero_writes(tmp_path):
    logger = MetricsLogger(str(tmp_path), is_main=False, max_steps=3, log_every_steps=1, tensorboard=True)
    logger.log_step(_step(1, 1.0))
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_resumed_run_drops_records_after_its_checkpoint_and_a_torn_line(tmp_path):
    logger = MetricsLogger(str(tmp_path), is_main=True, max_steps=9, log_every_steps=5, tensorboard=False)
    for s in range(1, 6):
        logger.log_step(_step(s, float(s)))
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # the process was killed mid-write
    resumed = MetricsLogger(
        str(tmp_path), is_main=True, max_steps=9, log_every_steps=5, tensorboard=False, start_step=3
    )
    resumed.log_step(_step(4, 40.0))
    resumed.close()
    assert [(r["step"], r["loss"]) for r in _records(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_mfu_is_achieved_over_peak_flops():
    assert mfu(1000.0, 6e9, world_size=2, peak_tflops=100.0) == 1000.0 * 6e9 / 2e14
    assert mfu(1000.0, 6e9, world_size=2, peak_tflops=None) is None


def test_a_mapping_by_source_becomes_one_tensorboard_scalar_per_name(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(str(tmp_path), is_main=True, max_steps=3, log_every_steps=1, tensorboard=True)
    logger.log_step({**_step(1, 2.5), "source_samples": {"web": 48, "books": 16}})
    logger.log_eval(
        {
            "step": 1,
            "eval_loss": 2.0,
            "eval_accuracy": 0.5,
            "eval_perplexity": 7.4,
            "eval_loss_by_source": {"web": 1.5},
        }
    )
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/source_samples/web", "train/source_samples/books", "eval/loss_by_source/web"} <= set(tags)
    assert events.Scalars("train/source_samples/books")[0].value == 16
    assert _records(tmp_path / "metrics.jsonl")[0]["source_samples"] == {"web": 48, "books": 16}
