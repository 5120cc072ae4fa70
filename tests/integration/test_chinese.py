"""Chinese end to end through the real CLIs, on real Chinese prose (the man-db zh_CN fixture): tokenizer
(WordPiece, SentencePiece) -> shards with segmenter word starts -> whole-word-masked training (one process)
-> export -> a fill-mask pipeline whose output is clean."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.paths import ZH_FIXTURE
from tests.helpers.runs import BIN, run_pretrain, write_config

pytestmark = pytest.mark.integration

TEXT = "每个手册页都包含一段概述。"


def _run(*cmd: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece-unigram"])
def test_chinese_tokenizer_shards_whole_word_training_export_fill_mask(kind, tmp_path):
    tokenizer, shards, export = tmp_path / "tokenizer", tmp_path / "shards", tmp_path / "export"
    extra = ["--byte-fallback"] if kind.startswith("sentencepiece") else []
    mlm_data = str(BIN / "mlm-data")
    _run(
        mlm_data,
        "tokenizer",
        "--input",
        str(ZH_FIXTURE),
        "--kind",
        kind,
        "--vocab-size",
        "1200",
        "--out",
        str(tokenizer),
        *extra,
    )
    build = _run(
        mlm_data,
        "build",
        "--input",
        str(ZH_FIXTURE),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(shards),
        "--seq-len",
        "64",
        "--workers",
        "2",
        "--validation-fraction",
        "0.1",
    )
    assert "(word-segmented 12, unsegmented 0)" in build.stdout
    assert "written without spaces" not in build.stderr  # the segmenter is installed: no warning

    config = write_config(
        tmp_path,
        shards,
        model={
            "preset": None,
            "num_layers": 2,
            "hidden_size": 64,
            "num_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
        },
        train={"max_steps": 20, "grad_accum_steps": 1, "log_every_steps": 5},
        optim={"lr": 5e-3, "warmup_steps": 2},
        masking={"probability": 0.15, "whole_word": True},
        checkpoint={"every_steps": 20},
        eval={"every_steps": None},
    )
    run = run_pretrain(config, ranks=1)
    assert run.returncode == 0, run.output[-3000:]
    losses = run.step_losses()
    assert sorted(losses) == list(range(1, 21))
    assert sum(losses[s] for s in range(18, 21)) < sum(losses[s] for s in range(1, 4)) - 1.5  # it learns

    _run(sys.executable, "-m", "pretrain", "export", str(run.run_dir), str(export))
    code = (  # as a user runs it, in a fresh process
        "import json, sys; from transformers import pipeline; "
        "fill = pipeline('fill-mask', model=sys.argv[1]); "
        "print(json.dumps([fill(text, top_k=5) for text in sys.argv[2:]], ensure_ascii=False))"
    )
    texts = [TEXT.replace("手册", "[MASK]", 1), TEXT.replace("概述", "概[MASK]", 1)]
    results = json.loads(_run(sys.executable, "-c", code, str(export), *texts).stdout)
    for masked, predictions in zip(texts, results, strict=True):
        assert len(predictions) == 5
        for p in predictions:
            assert not any(mark in p["sequence"] for mark in ("▁", "##", "[")), p
            expected = masked.replace("[MASK]", p["token_str"] or " ")  # '' is the bare '▁': a word break
            if kind == "wordpiece":  # its decoder puts a space between Chinese characters (as BERT's)
                assert p["sequence"].replace(" ", "") == expected, p
            else:  # SentencePiece: exactly the text, no stray word break around the filled token
                assert p["sequence"] == expected, p
