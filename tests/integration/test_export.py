"""Export: a real DeepSpeed checkpoint of our model -> HF dir; AutoModelForMaskedLM and fill-mask work and
the logits equal the trained model's. The run dir is built from the real components (tokenizer training,
pretrain.model, pretrain.engine, CheckpointManager) in one process."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.checkpoint import CheckpointManager
from pretrain.config import config_from_dict, config_hash, save_config
from pretrain.export import main as export_main
from tests.pretrain.ckpt_helpers import init_process_group

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer_data_dir(tmp_path_factory):
    """A data dir whose tokenizer/ is a 300-piece WordPiece trained on stdlib text (no shards needed)."""
    from data_pipeline.sample_corpus import write_sample_corpus
    from data_pipeline.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("export-data")
    write_sample_corpus(str(root / "corpus"), max_bytes=150_000)
    train_tokenizer([str(root / "corpus")], "wordpiece", 300, str(root / "shards" / "tokenizer"))
    return root / "shards"


def _train_and_save(run_dir, data_dir, stage: int, pair_head: bool):
    from transformers import AutoTokenizer

    from pretrain.engine import initialize_engine
    from pretrain.model import build_model

    init_process_group()
    cfg = config_from_dict({
        "run_dir": str(run_dir), "data": {"path": str(data_dir)},
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": 64, "dropout": 0.0, "attention_dropout": 0.0},
        "train": {"max_steps": 3, "micro_batch_size": 4}, "zero": {"stage": stage},
        "optim": {"lr": 1e-2}, "checkpoint": {"every_steps": 3},
    })  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=len(tok), pad_id=tok.pad_token_id, pair_head=pair_head)
    engine = initialize_engine(cfg, model, 1, on_gpu=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(5, len(tok), (4, 16), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "token_type_ids": torch.zeros_like(ids), "masked_positions": torch.arange(0, 64, 5),
                 "masked_labels": ids.flatten()[0:64:5]}  # fmt: skip
        if pair_head:
            batch["pair_labels"] = torch.tensor([0, 1, 0, 1])
        out = engine(**batch)
        engine.backward(out.mlm_loss_sum + out.pair_loss_sum)
        engine.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, str(run_dir / "config.yaml"))
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"step": 3, "eval_loss": 5.5, "eval_accuracy": 0.1}) + "\n"
    )
    CheckpointManager(str(run_dir), cfg.checkpoint, rank=0, world_size=1, config_hash=config_hash(cfg)).save(
        engine, {"step": 3, "tokens": 192, "consumed_samples": 12}, 3
    )
    return engine, tok


@pytest.mark.parametrize(("stage", "pair_head"), [(2, False), (3, True)])
def test_export_loads_in_transformers_and_logits_match(tmp_path, tokenizer_data_dir, stage, pair_head):
    import deepspeed
    from transformers import AutoModelForMaskedLM, pipeline

    engine, tok = _train_and_save(tmp_path / "run", tokenizer_data_dir, stage, pair_head)
    out_dir = tmp_path / "hf"
    assert export_main([str(tmp_path / "run"), str(out_dir)]) == 0
    assert (out_dir / "model.safetensors").exists() and not list(out_dir.glob("*.bin"))
    card = (out_dir / "README.md").read_text()
    assert "Optimizer steps: 3; training tokens: 192" in card and "eval_loss: 5.5" in card

    hf = AutoModelForMaskedLM.from_pretrained(str(out_dir)).eval()
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


def test_export_refuses_bad_sources(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "no COMPLETE.json" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("run_dir: x\n")
    assert export_main([str(tmp_path / "run"), str(tmp_path / "out")]) == 1
    assert "no complete, valid checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
