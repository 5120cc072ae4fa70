"""Inputs that are no regular file (a FIFO above all: opening one blocks until a writer comes). Named
directly they are refused in one line; found in a directory they are skipped and counted; never opened.
The CLI runs in a subprocess with a timeout, so that a regression fails instead of hanging the suite."""

import json
import os
import shutil
import subprocess

import pytest

from data_pipeline.errors import DataError
from data_pipeline.ingest.sources import expand_input_set
from tests.helpers.runs import BIN

TIMEOUT = 120  # a FIFO opened for reading would block forever; a real run takes a few seconds


def _corpus_with_fifo(tmp_path, sample_documents):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(sample_documents[:60]), encoding="utf-8")
    os.mkfifo(corpus / "pipe.txt")  # a name we would read
    os.mkfifo(corpus / "pipe")  # and one without an extension
    return corpus


def _mlm_data(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mlm-data"), *args], capture_output=True, text=True, timeout=TIMEOUT)


def test_fifos_are_refused_by_name_or_skipped_and_counted_never_opened(tmp_path, sample_documents):
    corpus = _corpus_with_fifo(tmp_path, sample_documents)
    for name in ("pipe.txt", "pipe"):
        fifo = f"{corpus / name}: input is a FIFO \\(named pipe\\), not a regular"
        with pytest.raises(DataError, match=fifo):
            expand_input_set([str(corpus / name)])
    found = expand_input_set([str(corpus), str(corpus / "*")])
    assert [os.path.basename(f.path) for f in found.files] == ["a.txt"]
    assert sorted(s.path for s in found.skipped) == sorted([str(corpus / "pipe"), str(corpus / "pipe.txt")])
    assert found.skipped_summary()["by_extension"] == {"not a regular file": {"files": 2, "bytes": 0}}
    found.check_skipped(0.0)  # they hold no bytes: counted, never a reason to fail
    with pytest.raises(DataError, match="/dev/null: input is a character device"):
        expand_input_set(["/dev/null"])


def test_build_and_tokenizer_skip_a_fifo_in_a_dir_and_refuse_one_named(
    tmp_path, sample_documents, wordpiece_tokenizer_dir
):
    corpus = _corpus_with_fifo(tmp_path, sample_documents)
    build = ["build", "--tokenizer", wordpiece_tokenizer_dir, "--seq-len", "32", "--workers", "1"]
    train = ["tokenizer", "--kind", "wordpiece", "--vocab-size", "300"]
    named = _mlm_data(*build, "--input", str(corpus / "pipe.txt"), "--out", str(tmp_path / "named"))
    assert named.returncode == 1 and named.stderr.count("\n") == 1, named.stderr
    assert f"mlm-data build: error: {corpus / 'pipe.txt'}: input is a FIFO" in named.stderr
    assert not (tmp_path / "named" / "manifest.json").exists()
    named = _mlm_data(*train, "--input", str(corpus / "pipe"), "--out", str(tmp_path / "tok-named"))
    assert named.returncode == 1 and f"{corpus / 'pipe'}: input is a FIFO" in named.stderr, named.stderr
    out = tmp_path / "shards"
    built = _mlm_data(*build, "--input", str(corpus), "--out", str(out))
    assert built.returncode == 0, built.stderr
    skipped = json.loads((out / "manifest.json").read_text())["build"]["skipped"]
    assert skipped["files"] == 2
    assert skipped["by_extension"] == {"not a regular file": {"files": 2, "bytes": 0}}
    trained = _mlm_data(*train, "--input", str(corpus), "--out", str(tmp_path / "tok"))
    assert trained.returncode == 0, trained.stderr
    assert "skipped 2 input files: not a regular file x2" in trained.stderr


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_fifo_in_a_tokenizer_dir_is_refused_by_name(wordpiece_tokenizer_dir, tmp_path, name):
    # tokenizer_config.json taken for absent would load another tokenizer (its class, its specials)
    from data_pipeline.tokenizer.load import load_tokenizer

    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(wordpiece_tokenizer_dir, tokenizer)
    (tokenizer / name).unlink()
    os.mkfifo(tokenizer / name)
    with pytest.raises(DataError, match=f"{tokenizer / name}: is a FIFO \\(named pipe\\), not a regular"):
        load_tokenizer(str(tokenizer))
