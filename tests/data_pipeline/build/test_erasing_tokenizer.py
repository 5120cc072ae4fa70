"""A tokenizer that erases the text (its normalizer maps everything to nothing, or to what it only knows
as [UNK]) used to build "successfully": the documents became rows of [CLS] and [SEP], nothing counted.
Now the documents the tokenizer turns into no token but special ones are counted, and a build where they
are more than half of the documents is refused, naming the tokenizer, with no manifest."""

import json
import os
import shutil

import pytest

from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.cli import main


def _with_normalizer(src: str, dst, content: str) -> str:
    """A copy of the tokenizer dir `src` whose normalizer replaces every character by `content`."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "tokenizer.json")
    with open(path) as f:
        data = json.load(f)
    data["normalizer"] = {"type": "Replace", "pattern": {"Regex": "[\\s\\S]"}, "content": content}
    with open(path, "w") as f:
        json.dump(data, f)
    return str(dst)


@pytest.mark.parametrize(("mode", "content"), [("full-sentences", ""), ("sop", ""), ("nsp", ""), ("full-sentences", "☃")])
def test_a_tokenizer_that_erases_the_text_is_refused_by_name(
    mixed_format_dir, wordpiece_tokenizer_dir, tmp_path, capsys, mode, content
):
    tokenizer = _with_normalizer(wordpiece_tokenizer_dir, tmp_path / "erasing", content)
    out = tmp_path / "shards"
    args = ["build", "--input", mixed_format_dir, "--tokenizer", tokenizer, "--out", str(out)]
    assert main([*args, "--seq-len", "32", "--mode", mode, "--workers", "1"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mlm-data build: error: ")]
    assert len(lines) == 1, err
    assert f"the tokenizer {tokenizer} erases the text: 60 of the 60 documents it was given (100%)" in lines[0]
    assert "refuses more than 50%" in lines[0]
    assert not (out / "manifest.json").exists()


def test_a_real_build_counts_the_documents_it_tokenized(mixed_format_dir, wordpiece_tokenizer_dir, tmp_path):
    cfg = BuildConfig(inputs=[mixed_format_dir], tokenizer=wordpiece_tokenizer_dir, out=str(tmp_path / "s"))
    counts = run_build(cfg)["counts"]
    assert counts["tokenized_documents"] == 60 and "documents_without_tokens" not in counts
