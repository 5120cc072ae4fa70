"""Every shipped YAML under configs/ loads (recipes as they are, model-size fragments under a run)."""

import pytest

from pretrain.config import load_config
from tests.helpers.paths import REPO

CONFIGS = REPO / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted(CONFIGS.glob("models/*.yaml"))


def test_the_shipped_configs_are_there():
    names = {p.name for p in RECIPES}
    assert {"bert-base.yaml", "bert-base-seq128.yaml", "bert-base-seq512.yaml", "roberta-base.yaml"} <= names
    assert {"modernbert-base.yaml", "modernbert-large.yaml"} <= names
    assert {p.stem for p in FRAGMENTS} == {"tiny", "mini", "small", "medium", "base", "large"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_says_its_hardware(path):
    cfg = load_config(str(path))
    assert cfg.run_dir and cfg.data.path
    text = path.read_text().lower()
    assert "hardware" in text or "cpu" in text, f"{path.name} should say in a comment what hardware it is for"
    if cfg.train.global_batch_size is not None:
        world = cfg.train.global_batch_size // (cfg.train.micro_batch_size * cfg.train.grad_accum_steps)
        assert cfg.train.global_batch(world) == cfg.train.global_batch_size


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.name)
def test_model_size_fragment_loads(path):
    cfg = load_config(str(path), ["run_dir=r", "data.path=d"])
    assert cfg.model.preset == path.stem and cfg.model.hidden_size % cfg.model.num_heads == 0


def test_phase_two_continues_phase_one():
    phase1 = load_config(str(CONFIGS / "bert-base-seq128.yaml"))
    phase2 = load_config(str(CONFIGS / "bert-base-seq512.yaml"))
    assert phase2.model.init_from and phase1.run_dir in phase2.model.init_from
    assert phase2.model.max_position_embeddings >= 512 and phase2.optim.lr == phase1.optim.lr


@pytest.mark.parametrize("size", ["base", "large"])
def test_modernbert_recipes_are_the_published_shape_at_seq_1024_and_30_percent(size):
    cfg = load_config(str(CONFIGS / f"modernbert-{size}.yaml"))
    assert cfg.model.arch == "modernbert" and cfg.model.preset == size
    assert (cfg.masking.probability, cfg.precision, cfg.model.local_attention) == (0.3, "bf16", 128)
    assert (cfg.model.num_layers, cfg.model.intermediate_size) == {"base": (22, 1152), "large": (28, 2624)}[
        size
    ]
    # the published global batch on one node of 8 GPUs
    assert cfg.train.global_batch(8) == {"base": 4608, "large": 4928}[size]


def test_the_two_phase_bert_recipe_is_the_two_aliases_in_one_run():
    from pretrain.config import check_trainable
    from pretrain.config.phases import phase_configs

    both = load_config(str(CONFIGS / "bert-base.yaml"))
    check_trainable(both)
    short, long = phase_configs(both)
    alias = load_config(str(CONFIGS / "bert-base-seq128.yaml"))
    assert not alias.phases and alias.train.max_steps == both.phases[0].start_step == 900_000
    assert (short.data, short.masking, short.optim) == (alias.data, alias.masking, alias.optim)
    phase2 = load_config(str(CONFIGS / "bert-base-seq512.yaml"))
    assert long.data.path == phase2.data.path and long.optim.warmup_steps == phase2.optim.warmup_steps
    assert long.model == short.model and long.train.global_batch_size == 256


@pytest.mark.parametrize("size", ["base", "large"])
def test_modernbert_recipes_extend_the_context_to_8192_then_decay(size):
    from pretrain.config import check_trainable
    from pretrain.config.phases import lr_segments, phase_configs

    cfg = load_config(str(CONFIGS / f"modernbert-{size}.yaml"))
    check_trainable(cfg)
    short, extension, decay = phase_configs(cfg)
    boundary = cfg.phases[0].start_step
    # the boundary is a checkpoint: the 160k-theta branch the header describes resumes from it
    assert boundary % cfg.checkpoint.every_steps == 0
    assert "8192" in extension.data.path and extension.model == short.model
    assert extension.model.max_position_embeddings >= 8192 >= extension.model.local_attention
    tokens_per_step = {
        p.train.global_batch(8) * s for p, s in ((short, 1024), (extension, 8192), (decay, 8192))
    }
    assert len(tokens_per_step) == 1  # every phase keeps phase 0's tokens per step
    segments = lr_segments(cfg, [short, extension, decay])
    assert [(s.start, s.optim.lr, s.optim.schedule) for s in segments[1:]] == [
        (boundary, 3.0e-4, "constant"),
        (cfg.phases[1].start_step, 3.0e-4, "wsd"),
    ]
    assert segments[-1].end == cfg.train.max_steps and decay.optim.decay_shape == "1-sqrt"
    (per_step,) = tokens_per_step
    assert [round((s.end - s.start) * per_step / 1e9) for s in segments[1:]] == [250, 50]  # B tokens
