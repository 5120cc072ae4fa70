"""Export: a real DeepSpeed checkpoint of our model -> HF dir; AutoModelForMaskedLM and fill-mask work, the
logits equal the trained model's, and the weights are the optimizer's fp32 master copies on every ZeRO stage.
Bad checkpoints (planted or crafted pickles, an empty record) are refused in one line, nothing executes.
The run dirs are built from the real components (the session's shards, the BERT model,
the DeepSpeed engine, CheckpointManager) in one process."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pretrain.checkpoint.export import main as export_main
from pretrain.checkpoint.manager import CheckpointManager
from pretrain.checkpoint.record import write_complete_record
from pretrain.config import config_from_dict, config_hash, save_config
from tests.helpers.engine import init_process_group
from tests.helpers.environment import restored_environment
from tests.helpers.trained import assert_export_truncates_to

pytestmark = pytest.mark.integration


class PlantedPayload:
    """Unpickling this creates a marker file: proof that a load ran code from the checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def shards(tiny_shards, tmp_path_factory):
    """A private copy of the session's shards (a test below replaces its tokenizer)."""
    return shutil.copytree(tiny_shards, tmp_path_factory.mktemp("export") / "shards")


def train_and_save(run_dir, shards, stage: int, pair_head: bool = False, precision: str = "fp32"):
    """3 steps of a tiny BERT on `shards`, saved by CheckpointManager as the trainer saves it.

    Returns (engine, tag dir)."""
    from data_pipeline.shards import ShardReader
    from pretrain.checkpoint.identity import describe_run, source_tokenizer_files
    from pretrain.models.registry import build_model
    from pretrain.runtime.engine import initialize_engine

    init_process_group()
    cfg = config_from_dict(
        {
            "run_dir": str(run_dir),
            "data": {"path": str(shards)},
            "precision": precision,
            "model": {
                "hidden_size": 32,
                "num_layers": 2,
                "num_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 64,
                "dropout": 0.0,
                "attention_dropout": 0.0,
            },
            "train": {"max_steps": 3, "micro_batch_size": 4},
            "zero": {"stage": stage},
            "optim": {"lr": 1e-2},
            "checkpoint": {"every_steps": 3},
            "fp16": {"initial_scale_power": 4},  # fp16: a scale the summed loss does not overflow at once
        }
    )
    source = ShardReader(str(shards))
    vocab = source.vocab_size
    torch.manual_seed(0)
    model = build_model(
        cfg.model, vocab_size=vocab, pad_id=source.special_ids["pad"], rows_have_pairs=pair_head
    )
    run = describe_run(cfg, model, source, seq_len=16, tokenizer_files=source_tokenizer_files(source))
    engine = initialize_engine(cfg, model, 1, on_gpu=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(5, vocab, (4, 16), generator=g)
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "masked_positions": torch.arange(0, 64, 5),
            "masked_labels": ids.flatten()[0:64:5],
        }
        if pair_head:
            batch["pair_labels"] = torch.tensor([0, 1, 0, 1])
        out = engine(**batch)
        engine.backward(out.mlm_loss_sum + out.pair_loss_sum)
        engine.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, str(run_dir / "config.yaml"))
    evaluation = json.dumps({"step": 3, "eval_loss": 5.5, "eval_accuracy": 0.1})
    (run_dir / "metrics.jsonl").write_text(evaluation + '\n{"step": 4, "loss": 5.')  # torn by a kill
    manager = CheckpointManager(
        str(run_dir), cfg.checkpoint, rank=0, world_size=1, config_hash=config_hash(cfg), run=run
    )
    tag_dir = manager.save(engine, {"step": 3, "tokens": 192, "consumed_samples": 12}, 3)
    return engine, tag_dir


@pytest.mark.parametrize(("stage", "pair_head"), [(2, False), (3, True)])
def test_export_loads_in_transformers_and_logits_match(tmp_path, shards, stage, pair_head):
    import deepspeed
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    engine, tag_dir = train_and_save(tmp_path / "run", shards, stage, pair_head)
    tokenizer_json = (shards / "tokenizer" / "tokenizer.json").read_bytes()
    if pair_head:  # export takes the checkpoint's tokenizer, never the (since changed) shards' one
        (shards / "tokenizer" / "tokenizer.json").write_text("{}")
    out_dir = tmp_path / "hf"
    old_umask = os.umask(0o022)
    try:
        assert export_main([str(tmp_path / "run"), str(out_dir)]) == 0
    finally:
        os.umask(old_umask)
        (shards / "tokenizer" / "tokenizer.json").write_bytes(tokenizer_json)
    assert os.stat(out_dir).st_mode & 0o777 == 0o755  # a plain mkdir's permissions, not mkdtemp's 0700
    assert (out_dir / "model.safetensors").exists() and not list(out_dir.glob("*.bin"))
    assert (out_dir / "tokenizer.json").read_bytes() == tokenizer_json
    card = (out_dir / "README.md").read_text()  # metrics.jsonl ends in a torn line: skipped
    assert "Optimizer steps: 3; training tokens: 192" in card and "eval_loss: 5.5" in card

    hf = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    ids = tok("def open(file, mode): return a file object", return_tensors="pt")
    module = engine.module.eval()
    with torch.no_grad(), deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=stage == 3):
        hidden = module.bert(**ids).last_hidden_state
        expected = module.cls.predictions(hidden)
    with torch.no_grad():
        got = hf(**ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    fill = pipeline("fill-mask", model=str(out_dir))
    predictions = fill(f"def open(file, mode): return a {tok.mask_token} object")
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)
    if pair_head:
        config = json.loads((out_dir / "config.json").read_text())
        assert config["architectures"] == ["BertForPreTraining"]
    assert_export_truncates_to(out_dir, 64)  # model.max_position_embeddings


def master_weights(engine) -> dict[str, torch.Tensor]:
    """{parameter name: fp32 master copy} read from the live engine's optimizer (not from any file)."""
    from deepspeed.utils import safe_get_full_fp32_param

    if engine.zero_optimization_stage() == 0:
        opt = engine.optimizer
        return {
            engine.param_names[p]: master.detach().clone()
            for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
            for p, master in zip(lp_group, hp_group, strict=True)
        }
    return {
        name: safe_get_full_fp32_param(p).detach().clone() for name, p in engine.module.named_parameters()
    }


@pytest.fixture
def cpu_fp16_test_device():
    """DeepSpeed's fp16 optimizers on CPU, in this process (pretrain/runtime/distributed.py), undone after."""
    init_process_group()  # DS_ACCELERATOR=cpu before deepspeed is imported
    from pretrain.runtime.distributed import enable_cpu_fp16_test_device

    undo = enable_cpu_fp16_test_device()
    yield
    undo()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_export_of_16_bit_runs_is_the_fp32_master_copy(tmp_path, shards, stage, precision, request):
    if precision == "fp16":
        request.getfixturevalue("cpu_fp16_test_device")
    engine, _ = train_and_save(tmp_path / "run", shards, stage, precision=precision)
    assert engine.global_steps == 3 and engine.skipped_steps == 0  # the masters did move
    masters = master_weights(engine)
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(masters) <= set(exported)
    for name, master in masters.items():
        assert exported[name].dtype == torch.float32 and torch.equal(exported[name], master), name
    # the 16-bit weights are a rounding of the masters: an export of them would fail the check above
    word = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(
        masters[word].to(torch.bfloat16 if precision == "bf16" else torch.float16).float(), masters[word]
    )
    decoder = exported.get("cls.predictions.decoder.weight", exported[word])  # tied: the same master
    assert torch.equal(decoder, masters[word])


@pytest.fixture(scope="module")
def zero2_run(shards, tmp_path_factory):
    """A valid ZeRO-2 run dir; tests corrupt copies of it."""
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    with restored_environment():  # a module fixture: the per-test reset of os.environ does not reach it
        train_and_save(run_dir, shards, 2)
    return run_dir


def _export_fails(capsys, source, out_dir) -> str:
    assert export_main([str(source), str(out_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlm-train export: error:") and "\n" not in err, err
    assert not out_dir.exists()
    return err


def test_export_refuses_planted_and_crafted_pickles_in_one_line(tmp_path, zero2_run, capsys, caplog):
    run_dir = shutil.copytree(zero2_run, tmp_path / "run")
    tag_dir = run_dir / "checkpoints" / "step-00000003"
    marker = tmp_path / "PWNED"
    # 1. an extra *_model_states.pt beside the listed ones (COMPLETE.json untouched)
    planted = tag_dir / "zero_pp_rank_1_mp_rank_00_model_states.pt"
    torch.save(PlantedPayload(str(marker)), planted)
    assert "no complete, valid checkpoint" in _export_fails(capsys, run_dir, tmp_path / "out")
    assert f"{planted} is not listed in COMPLETE.json" in caplog.text  # the scan says why it skipped it
    err = _export_fails(capsys, tag_dir, tmp_path / "out")
    assert f"{planted} is not listed in COMPLETE.json" in err
    planted.unlink()
    # 2. a listed DeepSpeed file replaced by a crafted pickle, the record rewritten to match
    victim = tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": PlantedPayload(str(marker))}, victim)
    record = json.loads((tag_dir / "COMPLETE.json").read_text())
    write_complete_record(
        str(tag_dir), step=3, world_size=1, config_hash=record["config_hash"], identity=record["identity"]
    )
    err = _export_fails(capsys, tag_dir, tmp_path / "out")
    assert f"{victim} is not a plain tensor file" in err
    # 3. a plain pickle (not a torch zip) in the model-states file
    victim.unlink()
    shutil.copy(zero2_run / "checkpoints" / "step-00000003" / victim.name, victim)
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(pickle.dumps(PlantedPayload(str(marker))))
    write_complete_record(
        str(tag_dir), step=3, world_size=1, config_hash=record["config_hash"], identity=record["identity"]
    )
    err = _export_fails(capsys, tag_dir, tmp_path / "out")
    assert "mp_rank_00_model_states.pt is not a plain tensor file" in err
    assert not marker.exists()


def test_export_refuses_bad_sources(tmp_path, zero2_run, capsys):
    err = _export_fails(capsys, tmp_path / "missing", tmp_path / "out")
    assert "not a checkpoint or run dir" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("run_dir: x\n")
    assert "no complete, valid checkpoint" in _export_fails(capsys, tmp_path / "run", tmp_path / "out")
    tag_dir = shutil.copytree(zero2_run / "checkpoints" / "step-00000003", tmp_path / "step-00000003")
    record = json.loads((tag_dir / "COMPLETE.json").read_text())
    (tag_dir / "COMPLETE.json").write_text(json.dumps({**record, "files": {}}))
    assert "'files' is {}" in _export_fails(capsys, tag_dir, tmp_path / "out")


def _rewrite(tag_dir, name: str, data: dict | None) -> None:
    """Replace (or, with None, remove) the checkpoint file `name` and rewrite COMPLETE.json to match, as a
    crafted checkpoint would."""
    path = tag_dir / name
    if data is None:
        path.unlink()
    else:
        path.write_text(json.dumps(data))
    record = json.loads((tag_dir / "COMPLETE.json").read_text())
    write_complete_record(
        str(tag_dir), step=3, world_size=1, config_hash=record["config_hash"], identity=record["identity"]
    )


def test_export_builds_the_model_its_hf_config_names_and_refuses_another(tmp_path, zero2_run, capsys):
    reference = tmp_path / "reference"
    assert export_main([str(zero2_run), str(reference)]) == 0
    capsys.readouterr()  # its progress bar
    weights = load_file(reference / "model.safetensors")
    tag_dir = shutil.copytree(zero2_run / "checkpoints" / "step-00000003", tmp_path / "step-00000003")
    saved = json.loads((tag_dir / "hf_config.json").read_text())
    assert saved["model_type"] == "bert" and saved["architectures"] == ["BertForMaskedLM"]
    # a record that lies about the model: another model type, a class that is no BERT export, another shape
    for lie, expected in [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not 'bert' (model.arch bert)"),
        (
            {"architectures": ["BertForQuestionAnswering"]},
            "not one of BertForMaskedLM, BertForPreTraining",
        ),
        ({"vocab_size": saved["vocab_size"] + 1}, "the weights do not fit the recorded model"),
    ]:
        _rewrite(tag_dir, "hf_config.json", {**saved, **lie})
        assert expected in _export_fails(capsys, tag_dir, tmp_path / "out")
    # a checkpoint saved before checkpoints held their HF config: rebuilt from the record, same weights
    _rewrite(tag_dir, "hf_config.json", None)
    assert export_main([str(tag_dir), str(tmp_path / "legacy")]) == 0
    legacy = load_file(tmp_path / "legacy" / "model.safetensors")
    assert legacy.keys() == weights.keys() and all(torch.equal(legacy[k], weights[k]) for k in weights)


def test_export_refuses_a_target_in_checkpoints_and_clears_a_killed_exports_leftover(
    tmp_path, zero2_run, capsys
):
    import socket
    import subprocess
    import sys

    inside = zero2_run / "checkpoints" / "model"
    assert "holds only checkpoints" in _export_fails(capsys, zero2_run, inside)
    # what a SIGKILLed export to `out` left beside it: our temp naming, a PID that is gone
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".out.export-{socket.gethostname()}-{proc.pid}-deadbeef"
    live = tmp_path / f".out.export-{socket.gethostname()}-{os.getpid()}-cafecafe"  # an export running
    other = tmp_path / f".other.export-{socket.gethostname()}-{proc.pid}-deadbeef"  # another target's
    for leftover in (dead, live, other):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half")
    assert export_main([str(zero2_run), str(tmp_path / "out")]) == 0
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == [live.name]
