"""Bad input through the real entry point: one clear line naming the culprit, exit 1, no training step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pretrain.__main__ import main

SHARDS_FREE_CONFIG = {
    "run_dir": "RUN",
    "data": {"path": "/nonexistent/shards"},
    "model": {"preset": "tiny"},
    "train": {"max_steps": 2, "micro_batch_size": 4, "resume": "none"},
    "metrics": {"tensorboard": False},
}


def _write(tmp_path: Path, cfg: dict) -> str:
    cfg = {**cfg, "run_dir": str(tmp_path / "run")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.micro_batchsize=4"],
            "unknown key train.micro_batchsize; did you mean train.micro_batch_size",
        ),
        (["precision=fp16"], "precision=fp16 needs a GPU"),
        (["train.global_batch_size=12"], "train.global_batch_size=12 but train.micro_batch_size (4)"),
        (["deepspeed.train_batch_size=64"], "deepspeed.train_batch_size=64 contradicts the value 4"),
        (["optim.lr=inf"], "optim.lr: expected a finite number, got 'inf'"),
        (["health.collective_timeout_minutes=.inf"], "health.collective_timeout_minutes: expected a finite"),
        (["optim.name=lamb"], "optim.name=lamb with zero.stage=2: LAMB's per-layer trust ratio"),
    ],
)
def test_config_errors_exit_1_with_one_line_before_training(
    tmp_path, capsys, monkeypatch, overrides, message
):
    if overrides == ["precision=fp16"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("fp16 is allowed on a GPU")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    code = main(["--config", _write(tmp_path, SHARDS_FREE_CONFIG), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("mlm-train: error:") and message in err[-1]
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_named(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 1
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err


# ------------------------------------------------------------ errors that need real shards (subprocess)
# tiny_shards (tests/conftest.py): built by the `mlm-data` CLI, seq_len 64, WordPiece vocabulary of 2000.


def _run_cli(tmp_path: Path, shards_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cfg = {**SHARDS_FREE_CONFIG, "data": {"path": str(shards_dir)}}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "pretrain", "--config", _write(tmp_path, cfg), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _assert_refused(result: subprocess.CompletedProcess, tmp_path: Path, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlm-train: error:"), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no training step happened


def test_missing_shards_dir_is_named(tmp_path):
    _assert_refused(_run_cli(tmp_path, tmp_path / "no-shards"), tmp_path, str(tmp_path / "no-shards"))


def test_shard_with_wrong_size_is_named(tiny_shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_shards, broken)
    shard = sorted(broken.glob("train-*.arrow"))[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    _assert_refused(_run_cli(tmp_path, broken), tmp_path, shard.name)


def test_seq_len_beyond_the_shards_is_refused(tiny_shards, tmp_path):
    result = _run_cli(tmp_path, tiny_shards, "data.seq_len=128")
    _assert_refused(result, tmp_path, "data.seq_len=128", str(tiny_shards))


def test_init_from_a_model_with_another_vocabulary_is_refused(tiny_shards, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    other = tmp_path / "other-bert"
    config = BertConfig(
        vocab_size=3000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertForMaskedLM(config).save_pretrained(other)
    result = _run_cli(tmp_path, tiny_shards, f"model.init_from={other}")
    _assert_refused(result, tmp_path, "vocabulary mismatch", str(other), "3000", "2000")


def test_document_isolation_on_shards_of_format_1_is_refused_naming_them(tiny_shards, tmp_path):
    from tests.helpers.shard_formats import format_1_copy

    old = format_1_copy(tiny_shards, tmp_path / "old-shards")
    result = _run_cli(tmp_path, old, "model.document_isolation=true")
    _assert_refused(result, tmp_path, f"the shards in {old}", "doc_start", "mlm-data build")


# ------------------------------------------------------------ which errors are one line (run_training)


def _run_training_raising(monkeypatch, exc: BaseException) -> int:
    """run_training with the training loop replaced by one that raises `exc` (what the mapping sees)."""
    import pretrain.trainer
    from pretrain.__main__ import run_training

    def failing_train(cfg, info, *, on_gpu):
        raise exc

    monkeypatch.setattr(pretrain.trainer, "train", failing_train)
    cfg = SimpleNamespace(run_dir="/runs/x")
    return run_training(cfg, None, on_gpu=False)


def test_only_typed_input_errors_and_file_errors_are_one_line(monkeypatch, capsys):
    import errno

    from data_pipeline.errors import DataError
    from pretrain.checkpoint.manager import CheckpointError
    from pretrain.config import ConfigError

    for exc in (ConfigError("bad key"), DataError("bad shard"), CheckpointError("bad checkpoint")):
        assert _run_training_raising(monkeypatch, exc) == 1
        assert capsys.readouterr().err == f"mlm-train: error: {exc}\n"
    full = OSError(errno.EFBIG, "File too large", "/runs/x/metrics.jsonl")
    assert _run_training_raising(monkeypatch, full) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlm-train: error: /runs/x/metrics.jsonl: File too large; the disk is full"), err
    # A bug keeps its traceback, whatever its type: a ValueError is not bad input, nor is a socket error.
    for bug in (ValueError("shapes do not match"), ConnectionResetError(errno.ECONNRESET, "reset by peer")):
        with pytest.raises(type(bug)):
            _run_training_raising(monkeypatch, bug)
        assert capsys.readouterr().err == ""
