"""`mlm-data` end to end: a real build/inspect/verify in a subprocess, and every bad input -> exit 1,
a message naming the culprit, no manifest written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.cli import main

MLM_DATA = str(Path(sys.executable).parent / "mlm-data")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MLM_DATA, *args], capture_output=True, text=True, timeout=300)


def test_build_inspect_verify_through_the_console_script(mixed_format_dir, wordpiece_tokenizer_dir, tmp_path):
    out = str(tmp_path / "shards")
    build = _run(
        "build",
        "--input",
        mixed_format_dir,
        "--tokenizer",
        wordpiece_tokenizer_dir,
        "--out",
        out,
        "--seq-len",
        "32",
        "--mode",
        "sop",
        "--workers",
        "2",
    )
    assert build.returncode == 0, build.stderr
    assert "documents 60," in build.stdout and "tokens/s" in build.stdout  # all three formats were read
    info = _run("inspect", out, "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["seq_len"] == 32 and data["vocab_size"] == 1000 and data["mode"] == "sop"
    assert data["sequences"] == sum(s["sequences"] for s in data["splits"].values()) > 0
    assert data["tokens"] == sum(s["tokens"] for s in data["splits"].values())
    text = _run("inspect", out, "--samples", "1")
    assert "[SEP]" in text.stdout and "|[CLS]" in text.stdout and "pair_label=" in text.stdout
    assert _run("verify", out).returncode == 0
    again = _run(
        "build",
        "--input",
        mixed_format_dir,
        "--tokenizer",
        wordpiece_tokenizer_dir,
        "--out",
        out,
        "--seq-len",
        "32",
        "--mode",
        "sop",
    )
    assert again.returncode == 0 and "already holds this build" in again.stdout


def _bad_build(capsys, out: Path, *args: str) -> str:
    code = main(["build", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert not (out / "manifest.json").exists()
    return err.strip().splitlines()[-1]


def test_missing_input_path(capsys, wordpiece_tokenizer_dir, tmp_path):
    missing = str(tmp_path / "no-such-corpus")
    err = _bad_build(capsys, tmp_path / "out", "--input", missing, "--tokenizer", wordpiece_tokenizer_dir)
    assert missing in err


def test_empty_corpus(capsys, wordpiece_tokenizer_dir, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "blank.txt").write_text("\n\n   \n\n")
    err = _bad_build(
        capsys, tmp_path / "out", "--input", str(tmp_path / "corpus"), "--tokenizer", wordpiece_tokenizer_dir
    )
    assert "empty corpus" in err and str(tmp_path / "corpus") in err
    assert not any(n.endswith(".arrow") for n in os.listdir(tmp_path / "out"))


def test_binary_input_file(capsys, wordpiece_tokenizer_dir, tmp_path):
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
    err = _bad_build(
        capsys,
        tmp_path / "out",
        "--input",
        str(tmp_path / "image.txt"),
        "--tokenizer",
        wordpiece_tokenizer_dir,
        "--workers",
        "2",
    )
    assert "image.txt" in err


def test_seq_len_too_small_for_nsp(capsys, sample_corpus_dir, wordpiece_tokenizer_dir, tmp_path):
    err = _bad_build(
        capsys,
        tmp_path / "out",
        "--input",
        sample_corpus_dir,
        "--tokenizer",
        wordpiece_tokenizer_dir,
        "--mode",
        "nsp",
        "--seq-len",
        "6",
    )
    assert "--seq-len 6 is too small for --mode nsp" in err


def test_tokenizer_without_mask_token(capsys, sample_corpus_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "."])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = tmp_path / "no-mask"
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(str(tok))
    err = _bad_build(capsys, tmp_path / "out", "--input", sample_corpus_dir, "--tokenizer", str(tok))
    assert str(tok) in err and "mask token" in err


def test_output_dir_holding_a_different_build_is_refused_unless_overwrite(
    capsys, mixed_format_dir, wordpiece_tokenizer_dir, tmp_path
):
    out = tmp_path / "shards"
    common = ["--input", mixed_format_dir, "--tokenizer", wordpiece_tokenizer_dir, "--out", str(out)]
    assert main(["build", *common, "--seq-len", "32"]) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out) if n != "tokenizer"}
    capsys.readouterr()
    assert main(["build", *common, "--seq-len", "64"]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "different build (its seq_len is 32, now 64)" in err and "--overwrite" in err
    assert {n: (out / n).read_bytes() for n in os.listdir(out) if n != "tokenizer"} == before  # untouched
    assert main(["build", *common, "--seq-len", "64", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 64


def test_verify_exits_1_naming_the_bad_shard(mixed_format_dir, wordpiece_tokenizer_dir, tmp_path):
    out = tmp_path / "shards"
    assert (
        main(
            [
                "build",
                "--input",
                mixed_format_dir,
                "--tokenizer",
                wordpiece_tokenizer_dir,
                "--out",
                str(out),
                "--seq-len",
                "32",
            ]
        )
        == 0
    )
    shard = out / "train-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-7])
    result = _run("verify", str(out))
    assert result.returncode == 1 and str(shard) in result.stderr


@pytest.mark.parametrize("args", [["inspect"], ["verify"]])
def test_inspect_and_verify_of_an_unfinished_dir(capsys, tmp_path, args):
    assert main([*args, str(tmp_path)]) == 1
    assert "manifest.json not found" in capsys.readouterr().err


def test_sentencepiece_flags_reach_the_trainer(capsys, sample_corpus_dir, tmp_path):
    args = ["tokenizer", "--input", sample_corpus_dir, "--vocab-size", "500", "--out"]
    assert main([*args, str(tmp_path / "wp"), "--kind", "wordpiece", "--byte-fallback"]) == 1
    assert "SentencePiece options" in capsys.readouterr().err
    assert (
        main([*args, str(tmp_path / "sp"), "--kind", "sentencepiece-bpe", "--character-coverage", "0.5"]) == 1
    )
    assert "character coverage 0.5 must be in [0.98, 1]" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "sp"), "--kind", "sentencepiece-bpe", "--byte-fallback"]) == 0
    vocab = json.loads((tmp_path / "sp" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "<0xF0>" in vocab  # the byte pieces


def test_a_build_of_the_scheme_before_offset_keys_is_another_build(
    capsys, mixed_format_dir, wordpiece_tokenizer_dir, tmp_path
):
    out = tmp_path / "shards"
    args = ["build", "--input", mixed_format_dir, "--tokenizer", wordpiece_tokenizer_dir, "--out", str(out)]
    assert main([*args, "--seq-len", "32"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["build"]["identity"]["scheme"]  # what builds keyed by record index recorded
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main([*args, "--seq-len", "32"]) == 1
    assert "holds a different build (made by another version of mlm-data" in capsys.readouterr().err
