"""Session-wide fixtures: environment hygiene (os.environ reset after each test; a module that leaves
launcher variables behind fails), and the real corpus, tokenizer and shards every suite shares.

- `tiny_corpus_and_tokenizer` (session): ~1 MB of the stdlib sample corpus and a WordPiece vocabulary of
  2000 trained on it through the real `mlm-data` CLI.
- `tiny_shards` (session): a shards dir built from them by `mlm-data build`: seq_len 64, full-sentences
  packing. Read-only: copy it (`shutil.copytree`) before corrupting anything.
- `tiny_nsp_shards` (session): the same corpus and tokenizer packed as NSP pairs. Read-only too.

Each is built once per test run, on first use, whichever suite asks first. Helpers that tests import
live in tests/helpers (conftest.py files keep only fixtures).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.environment import LAUNCHER_VARIABLES, launcher_variables, restored_environment
from tests.helpers.runs import build_shards, mlm_data


@pytest.fixture(autouse=True)
def _restore_environment():
    """Put os.environ back after every test (tests.helpers.environment says why)."""
    with restored_environment():
        yield


@pytest.fixture(scope="module", autouse=True)
def _no_launcher_variables_left(request):
    """Fail the module whose tests or fixtures leave launcher variables (RANK, LOCAL_RANK, MASTER_PORT, ...)
    in os.environ that were not there before it: the per-test reset above does not reach what a module- or
    session-scoped fixture sets, and every process a later test starts would inherit it. The variables
    are put back first, so one leak fails one module. Costs two dict reads per module."""
    before = launcher_variables()
    yield
    after = launcher_variables()
    if after != before:
        for name in LAUNCHER_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(before)
        changed = {
            k: (before.get(k), after.get(k))
            for k in sorted({*before, *after})
            if before.get(k) != after.get(k)
        }
        pytest.fail(
            f"{request.module.__name__} left launcher variables in os.environ (name: (before, after)): "
            f"{changed}; set them with monkeypatch.setenv, or wrap the fixture that sets them in "
            "tests.helpers.environment.restored_environment()",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus dir, tokenizer dir): ~1 MB of stdlib text and a 2000-piece WordPiece trained on it."""
    from data_pipeline.samples.corpus import write_sample_corpus

    root = tmp_path_factory.mktemp("tiny-data")
    write_sample_corpus(str(root / "corpus"), max_bytes=1_000_000)
    mlm_data(
        "tokenizer",
        "--input",
        str(root / "corpus"),
        "--kind",
        "wordpiece",
        "--vocab-size",
        "2000",
        "--out",
        str(root / "tokenizer"),
    )
    return root / "corpus", root / "tokenizer"


@pytest.fixture(scope="session")
def tiny_shards(tiny_corpus_and_tokenizer, tmp_path_factory) -> Path:
    """Full-sentences shards (seq_len 64) built by `mlm-data build`; treat as read-only."""
    corpus, tokenizer = tiny_corpus_and_tokenizer
    return build_shards(corpus, tokenizer, tmp_path_factory.mktemp("shards") / "full", "full-sentences")


@pytest.fixture(scope="session")
def tiny_nsp_shards(tiny_corpus_and_tokenizer, tmp_path_factory) -> Path:
    """NSP shards (seq_len 64) from the same corpus and tokenizer; treat as read-only."""
    corpus, tokenizer = tiny_corpus_and_tokenizer
    return build_shards(corpus, tokenizer, tmp_path_factory.mktemp("shards") / "nsp", "nsp")
