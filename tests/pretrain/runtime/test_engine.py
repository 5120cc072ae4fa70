"""DeepSpeed config generation from the typed config, the LR schedule, and a real engine on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import ConfigError, config_from_dict
from pretrain.runtime.engine import (
    FP32_GRAD_ACCUM_FROM_STEPS,
    GPU_BUCKET_ELEMENTS,
    deepspeed_config,
    parameter_groups,
)
from pretrain.runtime.lr_schedule import lr_factor


def make_cfg(**sections):
    raw = {
        "run_dir": "/tmp/unused",
        "data": {"path": "/tmp/unused"},
        "model": {"preset": "tiny"},
        "train": {"micro_batch_size": 4, "grad_accum_steps": 3, "max_steps": 100},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(raw)


def test_generated_config_carries_batch_precision_zero_and_clipping():
    cfg = make_cfg(precision="bf16", zero={"stage": 3}, optim={"grad_clip": 0.5})
    ds = deepspeed_config(cfg, world_size=2, on_gpu=False)
    assert ds["train_batch_size"] == 24
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"] == {"stage": 3}
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert ds["gradient_clipping"] == 0.5
    assert ds["steps_per_print"] > 10**6 and ds["wall_clock_breakdown"] is False
    assert "optimizer" not in ds  # torch AdamW is passed to deepspeed.initialize


def test_fp16_gets_the_typed_dynamic_loss_scale_on_gpu_and_a_clear_error_on_cpu(monkeypatch):
    cfg = make_cfg(
        precision="fp16",
        fp16={"initial_scale_power": 12, "loss_scale_window": 50, "hysteresis": 3, "min_loss_scale": 4},
    )
    assert deepspeed_config(cfg, 1, on_gpu=True)["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 12,
        "loss_scale_window": 50,
        "hysteresis": 3,
        "min_loss_scale": 4,
    }
    monkeypatch.delenv("MLM_TEST_CPU_FP16", raising=False)
    with pytest.raises(ConfigError, match="precision=fp16 needs a GPU.*bf16 or fp32"):
        deepspeed_config(cfg, 1, on_gpu=False)
    with pytest.raises(ConfigError, match=r"deepspeed.fp16.hysteresis=2 contradicts the value 3"):
        deepspeed_config(
            make_cfg(precision="fp16", fp16={"hysteresis": 3}, deepspeed={"fp16": {"hysteresis": 2}}),
            1,
            on_gpu=True,
        )


def test_the_cpu_fp16_test_device_is_opt_in(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU anyway")
    monkeypatch.setenv("MLM_TEST_CPU_FP16", "1")
    assert deepspeed_config(make_cfg(precision="fp16"), 1, on_gpu=False)["fp16"]["enabled"] is True


def test_lamb_is_deepspeeds_on_gpu_under_zero_0_and_refused_elsewhere():
    cfg = make_cfg(optim={"name": "lamb", "lr": 2e-3}, zero={"stage": 0})
    ds = deepspeed_config(cfg, 1, on_gpu=True)
    assert ds["optimizer"]["type"] == "Lamb" and ds["optimizer"]["params"]["lr"] == 2e-3
    assert "zero_allow_untested_optimizer" not in ds  # would switch off DeepSpeed's own LAMB refusal
    with pytest.raises(ConfigError, match="optim.name=lamb needs a GPU"):
        deepspeed_config(cfg, 1, on_gpu=False)
    for stage in (1, 2, 3):
        lamb_zero = make_cfg(optim={"name": "lamb"}, zero={"stage": stage})
        with pytest.raises(ConfigError, match=f"optim.name=lamb with zero.stage={stage}: .*use zero.stage=0"):
            deepspeed_config(lamb_zero, 1, on_gpu=True)


def test_offload_uses_deepspeeds_cpu_adam_and_needs_a_zero_stage():
    ds = deepspeed_config(make_cfg(zero={"stage": 2, "offload_optimizer": True}), 1, on_gpu=True)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW" and "zero_allow_untested_optimizer" not in ds
    with pytest.raises(ConfigError, match="zero.offload_optimizer needs zero.stage >= 1"):
        deepspeed_config(make_cfg(zero={"stage": 0, "offload_optimizer": True}), 1, on_gpu=True)


def test_user_keys_are_merged_and_contradictions_refused_naming_key_and_values():
    cfg = make_cfg(deepspeed={"zero_optimization": {"stage": 2, "overlap_comm": True}, "comms_logger": {}})
    ds = deepspeed_config(cfg, 1, on_gpu=False)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True} and ds["comms_logger"] == {}
    with pytest.raises(ConfigError, match=r"deepspeed.train_batch_size=64 contradicts the value 12"):
        deepspeed_config(make_cfg(deepspeed={"train_batch_size": 64}), 1, on_gpu=False)
    with pytest.raises(ConfigError, match=r"deepspeed.zero_optimization.stage=3 contradicts the value 2"):
        deepspeed_config(make_cfg(deepspeed={"zero_optimization": {"stage": 3}}), 1, on_gpu=False)


def test_inconsistent_global_batch_is_refused():
    cfg = make_cfg(train={"global_batch_size": 32})
    with pytest.raises(ConfigError, match="train.global_batch_size=32"):
        deepspeed_config(cfg, world_size=2, on_gpu=False)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_schedule_warms_up_then_decays_to_min_lr(schedule):
    cfg = make_cfg(optim={"warmup_steps": 10, "schedule": schedule, "min_lr_ratio": 0.1})
    factors = [lr_factor(s, cfg.optim, 100) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[100] == pytest.approx(0.1)
    mid = {"linear": 0.55, "cosine": 0.55, "polynomial": 0.1 + 0.9 * 0.25}[schedule]
    assert factors[55] == pytest.approx(mid)
    assert lr_factor(50, make_cfg(optim={"schedule": "constant"}).optim, 100) == 1.0


def test_no_weight_decay_on_biases_and_layernorm():
    from pretrain.models.registry import build_model

    cfg = make_cfg()
    model = build_model(cfg.model, vocab_size=100, pad_id=0, rows_have_pairs=False)
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_engine_on_cpu_follows_the_schedule_and_steps_once_per_accumulation(monkeypatch):
    from pretrain.models.registry import build_model
    from pretrain.runtime.distributed import init_distributed
    from pretrain.runtime.engine import initialize_engine

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed(timeout_minutes=1.0)
    cfg = make_cfg(optim={"lr": 1e-3, "warmup_steps": 2}, train={"grad_accum_steps": 2, "max_steps": 4})
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=60, pad_id=0, rows_have_pairs=False)
    engine = initialize_engine(cfg, model, info.world_size, on_gpu=False)
    lrs = []
    for _ in range(3):
        lrs.append(engine.get_lr()[0])
        for _ in range(2):
            ids = torch.randint(5, 60, (4, 16))
            pos = torch.arange(0, 64, 5)
            zeros, ones = torch.zeros_like(ids), torch.ones_like(ids)
            out = engine(
                input_ids=ids,
                attention_mask=ones,
                token_type_ids=zeros,
                masked_positions=pos,
                masked_labels=ids.reshape(-1)[pos],
            )
            engine.backward(out.mlm_loss_sum / pos.numel(), scale_wrt_gas=False)
            engine.step()
    assert engine.global_steps == 3
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])  # warmup 2 steps, then linear decay to 0 at 4
    assert math.isfinite(float(engine.get_global_grad_norm()))


def test_throughput_timer_is_off_everywhere_and_a_user_may_turn_it_on():
    for on_gpu in (False, True):
        assert deepspeed_config(make_cfg(), 1, on_gpu=on_gpu)["timers"] == {"throughput": {"enabled": False}}
    user = {"timers": {"throughput": {"enabled": True, "synchronized": False}}}
    assert deepspeed_config(make_cfg(deepspeed=user), 1, on_gpu=False)["timers"] == user["timers"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_gpu_zero_1_2_overlap_gradient_reduction_in_buckets_smaller_than_the_model(stage):
    ds = deepspeed_config(make_cfg(zero={"stage": stage}), 1, on_gpu=True)
    tuned = {
        "overlap_comm": True,
        "reduce_bucket_size": GPU_BUCKET_ELEMENTS,
        "allgather_bucket_size": GPU_BUCKET_ELEMENTS,
    }
    assert ds["zero_optimization"] == ({"stage": stage, **tuned} if stage in (1, 2) else {"stage": stage})
    # CPU numerics stay as they were: nothing of this on CPU.
    assert deepspeed_config(make_cfg(zero={"stage": stage}), 1, on_gpu=False)["zero_optimization"] == {
        "stage": stage
    }


def test_a_user_key_overrides_a_tuning_default_but_not_a_generated_key():
    user = {"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 1000}}
    ds = deepspeed_config(make_cfg(zero={"stage": 2}, deepspeed=user), 1, on_gpu=True)
    assert ds["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": False,
        "reduce_bucket_size": 1000,
        "allgather_bucket_size": GPU_BUCKET_ELEMENTS,
    }
    with pytest.raises(ConfigError, match=r"deepspeed.zero_optimization.stage=1 contradicts the value 2"):
        deepspeed_config(
            make_cfg(zero={"stage": 2}, deepspeed={"zero_optimization": {"stage": 1}}), 1, on_gpu=True
        )


@pytest.mark.parametrize(
    ("precision", "stage", "accum", "on_gpu", "fp32_accum"),
    [
        ("bf16", 2, FP32_GRAD_ACCUM_FROM_STEPS, True, True),
        ("bf16", 3, 16, True, True),
        ("bf16", 2, FP32_GRAD_ACCUM_FROM_STEPS - 1, True, False),
        ("bf16", 1, 16, True, False),  # ZeRO-1 would switch to BF16_Optimizer (another checkpoint layout)
        ("bf16", 0, 16, True, False),  # ZeRO-0 refuses the mix (NotImplementedError in deepspeed.initialize)
        ("fp32", 2, 16, True, False),
        ("bf16", 2, 16, False, False),  # CPU numerics unchanged
    ],
)
def test_bf16_accumulates_many_micro_batches_in_fp32_under_zero_2_3_on_gpu(
    precision, stage, accum, on_gpu, fp32_accum
):
    cfg = make_cfg(precision=precision, zero={"stage": stage}, train={"grad_accum_steps": accum})
    ds = deepspeed_config(cfg, 1, on_gpu=on_gpu)
    assert ds.get("data_types") == ({"grad_accum_dtype": "fp32"} if fp32_accum else None)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_builds_and_steps_the_gpu_dict_on_cpu(stage):
    """The GPU tuning keys are ones DeepSpeed 0.19 takes: the dict generated for a GPU builds a real
    engine (gloo) and its optimizer carries them (fp32 accumulation, overlapped reduction)."""
    import deepspeed

    from tests.helpers.engine import TinyNet, init_process_group

    init_process_group()
    accum = FP32_GRAD_ACCUM_FROM_STEPS
    cfg = make_cfg(
        precision="bf16", zero={"stage": stage}, train={"micro_batch_size": 2, "grad_accum_steps": accum}
    )
    ds = deepspeed_config(cfg, 1, on_gpu=True)
    torch.manual_seed(0)
    model = TinyNet()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
    assert engine.tput_timer.config.enabled is False
    assert engine.optimizer.gradient_accumulation_dtype == (torch.bfloat16 if stage == 1 else torch.float32)
    if stage in (1, 2):
        assert engine.optimizer.overlap_comm is True
        assert engine.optimizer.reduce_bucket_size == GPU_BUCKET_ELEMENTS
    for _ in range(accum):
        engine.backward(engine(torch.randn(2, 8).bfloat16()).float().pow(2).mean())
        engine.step()
    assert engine.global_steps == 1 and math.isfinite(float(engine.get_global_grad_norm()))
