"""A running `mlm-data build` killed with SIGKILL resumes from its finished work units and ends with the
same bytes as an uninterrupted build."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

MLM_DATA = str(Path(sys.executable).parent / "mlm-data")
FILES = 24


@pytest.fixture
def many_file_corpus(sample_documents, tmp_path) -> str:
    """The sample documents (twice over) spread across 24 files: 24 work units."""
    docs = sample_documents * 2
    out = tmp_path / "corpus"
    out.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(len(docs)), FILES)):
        (out / f"part-{i:02d}.txt").write_text("\n\n".join(docs[j] for j in chunk), encoding="utf-8")
    return str(out)


def _args(corpus: str, tokenizer: str, out: Path) -> list[str]:
    return [MLM_DATA, "build", "--input", corpus, "--tokenizer", tokenizer, "--out", str(out),
            "--seq-len", "40", "--mode", "nsp", "--workers", "2", "--rows-per-shard", "300"]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.integration
def test_resume_after_kill_9_is_byte_identical(many_file_corpus, wordpiece_tokenizer_dir, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(
        _args(many_file_corpus, wordpiece_tokenizer_dir, reference), check=True, capture_output=True
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen(_args(many_file_corpus, wordpiece_tokenizer_dir, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = out / ".work"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if work.is_dir() and len(list(work.glob("unit-*.done"))) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed; enlarge the corpus"
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-build
    proc.wait()
    done = len(list(work.glob("unit-*.done")))
    assert 3 <= done < FILES
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(
        _args(many_file_corpus, wordpiece_tokenizer_dir, out), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming:" in rerun.stderr and f"of {FILES} work units already done" in rerun.stderr
    assert _files(out) == _files(reference)
    assert not work.exists()
