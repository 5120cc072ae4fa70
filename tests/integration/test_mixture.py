"""A mixture of two shard sets through the real trainer (2 CPU ranks, ZeRO-2): a SIGKILL and a resume give
bit-identical losses, rows and `source_samples`; evaluation reports each source; a resume onto other
weights is refused by name."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.helpers.processes import kill_all, reached_step, start, wait_until
from tests.helpers.runs import (
    SHARDS_SEQ_LEN,
    mlm_data,
    run_pretrain,
    run_pretrain_configs,
    step_trace,
    write_config,
)

pytestmark = pytest.mark.integration

MAX_STEPS = 8
SETTINGS = {
    "train": {"max_steps": MAX_STEPS, "grad_accum_steps": 1},
    "checkpoint": {"every_steps": 2, "keep_last": 10},
    "eval": {"every_steps": 1000, "max_batches": 2},
    "debug": {"log_sample_indices": True},
}


@pytest.fixture(scope="module")
def books_shards(tiny_corpus_and_tokenizer, tmp_path_factory) -> Path:
    """A second shard set with the session's tokenizer: the first 150 kB of the corpus, built apart."""
    corpus, tokenizer = tiny_corpus_and_tokenizer
    root = tmp_path_factory.mktemp("books")
    (root / "corpus").mkdir()
    first = sorted(p for p in corpus.rglob("*") if p.is_file())[0]
    (root / "corpus" / "books.txt").write_bytes(first.read_bytes()[:150_000])
    # enough documents held out that each of the 2 ranks gets validation rows of this source too
    out = root / "books"
    mlm_data(
        *("build", "--input", str(root / "corpus"), "--tokenizer", str(tokenizer), "--out", str(out)),
        *("--seq-len", str(SHARDS_SEQ_LEN), "--workers", "1", "--validation-fraction", "0.1"),
    )
    return out


def mixture_config(where: Path, web: Path, books: Path, weights=(0.75, 0.25), run_dir=None) -> Path:
    """where/config.yaml training web and books at `weights` (run dir where/run unless given)."""
    sources = [
        {"path": str(web), "weight": weights[0], "name": "web"},
        {"path": str(books), "weight": weights[1], "name": "books"},
    ]
    where.mkdir(exist_ok=True)
    run = {"run_dir": str(run_dir)} if run_dir else {}
    return write_config(where, web, data={"path": None, "sources": sources}, **SETTINGS, **run)


def source_trace(run) -> dict[int, dict]:
    """{step: source_samples} of a PretrainRun's step records."""
    return {r["step"]: r["source_samples"] for r in run.metrics if "loss" in r}


def test_sigkill_and_resume_of_a_mixture_is_bit_identical(tiny_shards, books_shards, tmp_path):
    baseline = run_pretrain(mixture_config(tmp_path / "a", tiny_shards, books_shards), ranks=2)
    assert baseline.returncode == 0, baseline.output[-3000:]
    expected, drawn = step_trace(baseline.run_dir), source_trace(baseline)
    assert sorted(expected) == list(range(1, MAX_STEPS + 1))
    assert drawn[MAX_STEPS] == {"web": 96, "books": 32}  # 0.75 / 0.25 of 8 x 16 samples
    assert all(sum(drawn[s].values()) == 16 * s for s in drawn)
    final = baseline.evals()[-1]
    assert set(final["eval_loss_by_source"]) == {"web", "books"}
    assert min(final["eval_loss_by_source"].values()) <= final["eval_loss"]
    assert final["eval_loss"] <= max(final["eval_loss_by_source"].values())

    config = mixture_config(tmp_path / "b", tiny_shards, books_shards)
    kill_step = random.Random().randint(3, MAX_STEPS - 1)
    print(f"killing at step {kill_step}")
    proc = start(config)
    wait_until(proc, reached_step(tmp_path / "b" / "run", kill_step), poll=0.01)
    kill_all(proc)
    # one launch: the resume, then the same run dir with other weights (refused by name)
    other = mixture_config(tmp_path / "c", tiny_shards, books_shards, (0.5, 0.5), tmp_path / "b" / "run")
    resumed, refused = run_pretrain_configs([config, other], ranks=2)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "resuming from" in resumed.output
    assert step_trace(resumed.run_dir) == expected  # losses bit for bit, the same rows
    assert source_trace(resumed) == drawn
    errors = [line for line in refused.output.splitlines() if "error:" in line]
    assert refused.returncode == 1 and errors, refused.output[-3000:]
    assert "data.sources (names and weights)" in errors[0] and "resume_allow_changed=[weights]" in errors[0]
