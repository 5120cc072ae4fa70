"""Config loading: strict keys with hints, types, overrides, base files, batch arithmetic, round trip."""

import pytest
import yaml

from pretrain.config import (
    ConfigError,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)
from pretrain.models.bert.config import PRESETS

MINIMAL = "run_dir: runs/x\ndata:\n  path: shards\nmodel:\n  preset: tiny\n"


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(MINIMAL)
    return str(path)


def test_minimal_file_gets_defaults_and_preset(cfg_file):
    cfg = load_config(cfg_file)
    assert cfg.run_dir == "runs/x" and cfg.data.path == "shards" and cfg.precision == "fp32"
    assert cfg.model.hidden_size == PRESETS["tiny"]["hidden_size"] and cfg.model.num_layers == 2
    assert cfg.masking.probability == 0.15 and cfg.train.resume == "auto" and cfg.zero.stage == 2


def test_overrides_are_parsed_as_yaml_and_beat_the_preset(cfg_file):
    cfg = load_config(
        cfg_file,
        [
            "train.max_steps=50",
            "optim.lr=3e-4",
            "optim.betas=[0.9, 0.98]",
            "model.hidden_size=64",
            "precision=bf16",
            "train.global_batch_size=null",
            "deepspeed.wall_clock_breakdown=true",
        ],
    )
    assert cfg.train.max_steps == 50 and cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.9, 0.98)
    assert cfg.model.hidden_size == 64 and cfg.model.num_layers == 2 and cfg.precision == "bf16"
    assert cfg.deepspeed == {"wall_clock_breakdown": True}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_step=3", "unknown key train.max_step; did you mean train.max_steps?"),
        ("trian.seed=3", "unknown key trian; did you mean train?"),
        ("masking.probablity=0.2", "did you mean masking.probability?"),
        ("train.max_steps=ten", "train.max_steps: expected int, got 'ten'"),
        ("train.micro_batch_size=2.5", "train.micro_batch_size: expected int"),
        ("masking.whole_word=maybe", "masking.whole_word: expected bool"),
        ("precision=fp8", "precision: expected one of 'fp32', 'bf16', 'fp16'"),
        ("zero.stage=4", "zero.stage must be 0, 1, 2 or 3"),
        ("train.seed=-1", "train.seed must be >= 0"),
        ("masking.probability=1.5", "masking.probability must be in (0, 1)"),
        ("model.num_heads=3", "model.hidden_size (128) must be divisible by model.num_heads (3)"),
        ("train=5", "train must be a mapping"),
        ("max_steps", "not of the form section.key=value"),
    ],
)
def test_bad_keys_and_values_are_named(cfg_file, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, [override])
    assert message in str(info.value)
    assert cfg_file in str(info.value) or "override" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=1e400", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.eps=.inf", "optim.eps"),
        ("optim.grad_clip=inf", "optim.grad_clip"),
        ("optim.weight_decay=1e400", "optim.weight_decay"),
        ("optim.betas=[0.9, .nan]", "optim.betas[1]"),
        ("health.collective_timeout_minutes=inf", "health.collective_timeout_minutes"),
        ("train.max_minutes=.inf", "train.max_minutes"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(cfg_file, override, key):
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file, [override])
    assert f"{key}: expected a finite number, got" in str(info.value)


def test_fp16_loss_scaling_keys_are_typed_and_checked(cfg_file):
    cfg = load_config(cfg_file, ["fp16.initial_scale_power=8", "fp16.hysteresis=1"])
    assert (cfg.fp16.initial_scale_power, cfg.fp16.hysteresis, cfg.fp16.loss_scale_window) == (8, 1, 1000)
    with pytest.raises(ConfigError, match="fp16.hysteresis must be >= 1"):
        load_config(cfg_file, ["fp16.hysteresis=0"])
    with pytest.raises(ConfigError, match=r"fp16.min_loss_scale \(512\) must not exceed .* \(256\)"):
        load_config(cfg_file, ["fp16.initial_scale_power=8", "fp16.min_loss_scale=512"])


def test_invalid_yaml_is_one_line_naming_the_file_and_the_spot(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: 3\n  bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    assert str(err.value) == (
        f"{bad}: not valid YAML at line 2, column 6: expected ',' or '}}', but got ':' "
        "(while parsing a flow mapping)"
    )


def test_missing_file_and_required_keys(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("model: {preset: tiny}\n")
    with pytest.raises(ConfigError, match="run_dir is required"):
        load_config(str(empty))
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(str(empty), ["run_dir=r"])
    with pytest.raises(ConfigError, match="model.hidden_size.*not set"):
        load_config(str(empty), ["run_dir=r", "data.path=d", "model.preset=null"])


def test_base_file_is_merged_under_the_child(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.yaml").write_text("model:\n  preset: mini\n  dropout: 0.0\n")
    (tmp_path / "parent.yaml").write_text(
        "base: models/m.yaml\nrun_dir: a\ndata: {path: d}\ntrain: {seed: 5}\n"
    )
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nrun_dir: b\nmodel: {dropout: 0.2}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (
        cfg.run_dir == "b"
        and cfg.train.seed == 5
        and cfg.model.hidden_size == 256
        and cfg.model.dropout == 0.2
    )
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "loop.yaml"))


def test_batch_arithmetic_names_the_numbers(cfg_file):
    cfg = load_config(
        cfg_file, ["train.micro_batch_size=8", "train.grad_accum_steps=4", "train.global_batch_size=64"]
    )
    assert cfg.train.global_batch(world_size=2) == 64
    with pytest.raises(
        ConfigError, match=r"global_batch_size=64 .* \(8\) x .* \(4\) x world size \(4\) = 128"
    ):
        cfg.train.global_batch(world_size=4)


def test_saved_config_reloads_identically(cfg_file, tmp_path):
    cfg = load_config(cfg_file, ["optim.lr=0.001", "train.max_tokens=1000000"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, str(out))
    assert yaml.safe_load(out.read_text()) == config_to_dict(cfg)
    again = load_config(str(out))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(cfg_file, ["optim.lr=0.002"])) != config_hash(cfg)
