"""Resume checks what it resumes onto, through the real trainer (1 CPU process) and the real shards: another
seed is refused in one line (config.yaml untouched), harmless changes pass silently, and a raised
max_steps takes effect at the resumed step. The identity tells other shards and a replaced tokenizer apart.
"""

from __future__ import annotations

import json
import shutil

import pytest

from pretrain.checkpoint.record import CheckpointError
from pretrain.config import config_from_dict
from pretrain.runtime.lr_schedule import lr_factor
from tests.helpers.runs import run_pretrain, write_config

pytestmark = pytest.mark.integration

OPTIM = {"lr": 2e-3, "warmup_steps": 1, "schedule": "linear"}


def test_resume_refuses_another_seed_and_follows_a_raised_max_steps(tiny_shards, tmp_path):
    config = write_config(
        tmp_path,
        tiny_shards,
        train={"max_steps": 3, "grad_accum_steps": 1},
        optim=OPTIM,
        checkpoint={"every_steps": 1000},
        eval={"every_steps": 1000, "max_batches": 1},
    )
    first = run_pretrain(config, ranks=1)
    assert first.returncode == 0, first.output[-3000:]
    assert first.metrics[-2]["step"] == 3  # the last step record, then the final evaluation
    assert "building the DeepSpeed engine: ZeRO-" in first.output
    saved_config = (first.run_dir / "config.yaml").read_text()

    refused = run_pretrain(config, ["train.seed=1", "train.max_steps=6"], ranks=1)
    assert refused.returncode == 1
    errors = [line for line in refused.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "train.seed 0 -> 1" in errors[0], refused.output[-3000:]
    assert "train.resume_allow_changed=[seed]" in errors[0]
    assert (first.run_dir / "config.yaml").read_text() == saved_config  # not overwritten by the refused run

    longer = run_pretrain(
        config, ["train.max_steps=6", "eval.every_steps=500", "checkpoint.every_steps=500"], ranks=1
    )
    assert longer.returncode == 0, longer.output[-3000:]
    assert "changed settings" not in longer.output and "another config" not in longer.output
    lrs = {r["step"]: r["lr"] for r in longer.metrics if "lr" in r}
    optim = config_from_dict({"run_dir": "x", "data": {"path": "x"}, "optim": OPTIM}).optim
    assert lr_factor(3, optim, 3) == 0.0  # what the first run's schedule gives the next update
    assert lrs[4] == pytest.approx(2e-3 * lr_factor(3, optim, 6), rel=1e-12) and lrs[4] > 0
    assert (
        "learning rate at the resumed update 3: 0 from the checkpoint's schedule -> 0.0012" in longer.output
    )


def test_identity_tells_shards_and_tokenizers_apart(tiny_shards, tiny_nsp_shards, tmp_path):
    from data_pipeline.shards import ShardReader
    from pretrain.checkpoint.identity import check_resume_identity, run_identity, tokenizer_files

    class Model:  # run_identity reads the built model's shape
        def shape(self):
            return {"vocab_size": 2000, "hidden_size": 128}

    full = run_identity("bert", Model(), ShardReader(str(tiny_shards)), seq_len=64, seed=0)
    nsp = run_identity("bert", Model(), ShardReader(str(tiny_nsp_shards)), seq_len=64, seed=0)
    assert full["tokenizer"] == nsp["tokenizer"] and full["data"] != nsp["data"]
    with pytest.raises(CheckpointError, match=r"data \(build identity\) .* -> .*allow_changed=\[data\]"):
        check_resume_identity("ckpt", full, nsp, allowed=())

    shards = shutil.copytree(tiny_shards, tmp_path / "shards")
    tokenizer_config = shards / "tokenizer" / "tokenizer_config.json"
    assert "tokenizer.json" in tokenizer_files(str(shards / "tokenizer"), full["tokenizer"])
    tokenizer_config.write_text(
        json.dumps({**json.loads(tokenizer_config.read_text()), "model_max_length": 7})
    )
    with pytest.raises(CheckpointError, match="tokenizer was replaced after the build"):
        tokenizer_files(str(shards / "tokenizer"), full["tokenizer"])


def test_a_replaced_tokenizer_stops_the_trainer_in_one_line_before_the_engine(tiny_shards, tmp_path):
    shards = shutil.copytree(tiny_shards, tmp_path / "shards")
    tokenizer_config = shards / "tokenizer" / "tokenizer_config.json"
    tokenizer_config.write_text(
        json.dumps({**json.loads(tokenizer_config.read_text()), "model_max_length": 7})
    )
    refused = run_pretrain(write_config(tmp_path, shards), ranks=1)
    assert refused.returncode == 1, refused.output[-3000:]
    errors = [line for line in refused.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "tokenizer was replaced after the build" in errors[0], refused.output[-3000:]
    assert "building the DeepSpeed engine" not in refused.output  # found out before the (slow) engine build
