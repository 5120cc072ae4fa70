"""A hand-edited or hostile manifest.json: paths that escape the shards directory and wrong types are one
line naming the key, in `mlm-data verify`, `mlm-data inspect`, the reader and the trainer."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.cli import main
from data_pipeline.errors import DataError
from data_pipeline.shards.format import ShardReader


@pytest.fixture(scope="session")
def built_shards(mixed_format_dir, wordpiece_tokenizer_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("manifest") / "shards")
    run_build(BuildConfig(inputs=[mixed_format_dir], tokenizer=wordpiece_tokenizer_dir, out=out, seq_len=32))
    return out


def _set_file(name):
    def edit(m, d):
        m["splits"]["train"]["shards"][0]["file"] = name

    return edit


def _outside_copy(m, d):
    """A readable shard outside the directory, with the listed size and checksum (so only the path is off)."""
    outside = d.parent / "outside"
    outside.mkdir()
    shutil.copy(d / m["splits"]["train"]["shards"][0]["file"], outside / "x.arrow")
    return outside / "x.arrow"


def _dotdot(m, d):
    _outside_copy(m, d)
    _set_file("../outside/x.arrow")(m, d)


def _symlink_out(m, d):
    os.symlink(_outside_copy(m, d), d / "evil.arrow")
    _set_file("evil.arrow")(m, d)


def _duplicate(m, d):
    train = m["splits"]["train"]
    train["shards"].append(dict(train["shards"][0]))
    train["rows"] += train["shards"][0]["rows"]
    train["tokens"] += train["shards"][0]["tokens"]


def _set(*keys, value):
    def edit(m, d):
        node = m
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


def _same_as_cls(m, d):
    m["tokenizer"]["special_ids"]["mask"] = m["tokenizer"]["special_ids"]["cls"]


CASES = {
    "dotdot": (_dotdot, 'splits.train.shards[0].file "../outside/x.arrow" resolves to'),
    "absolute": (
        _set_file("/etc/passwd"),
        'splits.train.shards[0].file "/etc/passwd" resolves to /etc/passwd',
    ),
    "symlink": (_symlink_out, 'splits.train.shards[0].file "evil.arrow" resolves to'),
    "tokenizer_dir": (_set("tokenizer", "dir", value="../../"), 'tokenizer.dir "../../" resolves to'),
    "file_null": (_set_file(None), "splits.train.shards[0].file must be a non-empty string, got null"),
    "seq_len_string": (_set("seq_len", value="64"), 'seq_len must be an integer, got "64"'),
    "splits_list": (_set("splits", value=[]), "splits must be an object, got []"),
    "shards_dict": (_set("splits", "train", "shards", value={}), "splits.train.shards must be a list"),
    "vocab_list": (_set("tokenizer", "vocab_size", value=[1]), "tokenizer.vocab_size must be an integer"),
    "rows_bool": (_set("splits", "validation", "rows", value=True), "splits.validation.rows must be an int"),
    "counts_str": (_set("counts", "documents", value="60"), "counts.documents must be an integer"),
    "unknown_key": (_set("shards", value=[]), "key shards is not a manifest key"),
    "duplicate": (_duplicate, 'splits.train.shards[1].file "train-00000.arrow" is the same file as'),
    "top_list": (lambda m, d: [], "the top level must be an object, got []"),
    "no_seq_len": (lambda m, d: m.pop("seq_len") and None, "key seq_len is missing"),
    "mask_at_vocab_size": (
        _set("tokenizer", "special_ids", "mask", value=1000),
        "tokenizer.special_ids.mask 1000 is not below tokenizer.vocab_size 1000",
    ),
    "mask_far_above": (
        _set("tokenizer", "special_ids", "mask", value=10**12),
        "tokenizer.special_ids.mask 1000000000000 is not below tokenizer.vocab_size 1000",
    ),
    "mask_is_cls": (_same_as_cls, "tokenizer.special_ids.mask {cls} is also tokenizer.special_ids.cls"),
    "no_mask": (lambda m, d: m["tokenizer"]["special_ids"].pop("mask") and None, "ids.mask is missing"),
    "special_role": (_set("tokenizer", "special_ids", "bos", value=5), "ids.bos is not a special token"),
}


def _damage(built_shards, tmp_path, case) -> str:
    d = tmp_path / "shards"
    shutil.copytree(built_shards, d)
    manifest = json.loads((d / "manifest.json").read_text())
    edit, _ = CASES[case]
    replaced = edit(manifest, d)
    (d / "manifest.json").write_text(json.dumps(manifest if replaced is None else replaced))
    return str(d)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_manifest_is_one_line_naming_the_key(built_shards, tmp_path, capsys, case):
    d = _damage(built_shards, tmp_path, case)
    cls = json.loads((Path(built_shards) / "manifest.json").read_text())["tokenizer"]["special_ids"]["cls"]
    expected = CASES[case][1].format(cls=cls)
    for command in ("verify", "inspect"):
        assert main([command, d]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # exactly one line
        assert err.startswith(f"mlm-data {command}: error: {os.path.join(d, 'manifest.json')}: ")
        assert expected in err
    with pytest.raises(DataError, match="manifest.json: "):
        ShardReader(d)


def test_the_real_manifest_passes(built_shards):
    assert main(["verify", built_shards]) == 0
    assert len(ShardReader(built_shards)) > 0


def test_trainer_exits_1_with_one_line_on_a_bad_manifest(built_shards, tmp_path):
    d = _damage(built_shards, tmp_path, "seq_len_string")
    out = _train(d, tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mlm-train: error: ") and 'seq_len must be an integer, got "64"' in last


def _train(d, tmp_path) -> subprocess.CompletedProcess:
    """`python -m pretrain` for 2 steps on the shards dir `d` (CPU, one process)."""
    config = {
        "run_dir": str(tmp_path / "run"),
        "data": {"path": str(d)},
        "model": {"preset": "tiny"},
        "train": {"max_steps": 2, "micro_batch_size": 4, "resume": "none"},
        "metrics": {"tensorboard": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, "-m", "pretrain", "--config", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "DS_ACCELERATOR": "cpu"},
    )


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("seq_len", 16, "rows are 32 tokens wide but the manifest's seq_len is 16"),
        ("id_dtype", "uint32", "token ids are uint16 but the manifest's id_dtype is uint32"),
    ],
)
def test_verify_says_one_line_per_shard_of_a_manifest_that_lies_about_the_schema(
    built_shards, tmp_path, capsys, key, value, problem
):
    d = tmp_path / "shards"
    shutil.copytree(built_shards, d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest[key] = value
    (d / "manifest.json").write_text(json.dumps(manifest))
    shards = [s["file"] for split in manifest["splits"].values() for s in split["shards"]]
    assert main(["verify", str(d)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(shards) + 1, lines  # one per shard and the summary line
    for line, name in zip(lines, shards, strict=False):
        assert line == f"BAD {d / name}: {problem}"


TOKENIZER_LIES = {  # sound on their own (ids below vocab_size, distinct), not what the tokenizer gives
    "mask": (("special_ids", "mask"), 7, "the manifest's tokenizer.special_ids.mask is 7 but the tokenizer"),
    "vocab_size": (("vocab_size",), 60000, "the manifest's tokenizer.vocab_size is 60000 but the tokenizer"),
}


def _lie_about_the_tokenizer(built_shards, tmp_path, case) -> tuple[Path, str]:
    keys, value, expected = TOKENIZER_LIES[case]
    d = tmp_path / "shards"
    shutil.copytree(built_shards, d)
    manifest = json.loads((d / "manifest.json").read_text())
    node = manifest["tokenizer"]
    for key in keys[:-1]:
        node = node[key]
    truth = node[keys[-1]]
    node[keys[-1]] = value
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d, f"{expected} {d / 'tokenizer'}/ has {truth}"


@pytest.mark.parametrize("case", sorted(TOKENIZER_LIES))
def test_verify_compares_special_ids_and_vocab_size_with_the_tokenizer(built_shards, tmp_path, capsys, case):
    d, expected = _lie_about_the_tokenizer(built_shards, tmp_path, case)
    ShardReader(str(d))  # the manifest alone is sound
    assert main(["verify", str(d)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"BAD {d / 'manifest.json'}: {expected}"), lines


@pytest.mark.parametrize("case", sorted(TOKENIZER_LIES))
def test_trainer_compares_special_ids_and_vocab_size_with_the_tokenizer(built_shards, tmp_path, case):
    d, expected = _lie_about_the_tokenizer(built_shards, tmp_path, case)
    out = _train(d, tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mlm-train: error: {expected}"), last
