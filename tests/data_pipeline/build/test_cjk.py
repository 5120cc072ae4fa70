"""Chinese builds of real prose (the man-db zh_CN fixture): the segmenter's word starts reach the shards,
whole-word and span masking then mask about the configured share with WordPiece and SentencePiece,
hard-wrapped lines are joined without a space, and a build without the segmenter warns once, counts what
it did not segment and is not mixed up with a segmented one."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.tokenizer import segment
from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.errors import DataError
from data_pipeline.shards.manifest import Manifest
from data_pipeline.build.merge import merge_parts
from data_pipeline.shards.format import ShardReader
from pretrain.config import MaskingConfig
from pretrain.data.masking import MaskingCollator
from tests.helpers.paths import ZH_FIXTURE

ZH_DOCS = ZH_FIXTURE.read_text(encoding="utf-8").split("\n\n")
KINDS = ["wordpiece", "sentencepiece-unigram"]
SEQ_LEN = 128
_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


@pytest.fixture(scope="module")
def zh_corpus(tmp_path_factory) -> Path:
    """The fixture's 12 documents in two files (so that a build can be cut into two partitions)."""
    out = tmp_path_factory.mktemp("zh_corpus")
    for i in range(2):
        (out / f"zh-{i}.txt").write_text("\n\n".join(ZH_DOCS[i::2]), encoding="utf-8")
    return out


def _build(inputs, tokenizer: str, out: Path, **kw) -> dict:
    cfg = BuildConfig(inputs=[str(i) for i in inputs], tokenizer=tokenizer, out=str(out), seq_len=SEQ_LEN,
                      validation_fraction=0.0, **kw)
    return run_build(cfg)


def _rows(out: Path) -> dict[str, np.ndarray]:
    reader = ShardReader(str(out), "train")
    return reader.take(range(len(reader)))


@pytest.fixture(scope="module")
def zh_shards(zh_corpus, zh_tokenizer_dirs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zh_shards")
    for kind, tokenizer in zh_tokenizer_dirs.items():
        _build([zh_corpus], tokenizer, root / kind)
    return {kind: root / kind for kind in KINDS}


def masked_shares(shards: Path, span: bool, epochs: int = 10) -> np.ndarray:
    """The share of each row's maskable tokens that MaskingCollator (probability 0.15, whole words or
    spans of them) selects, over `epochs` epochs of the train rows."""
    manifest = Manifest.load(str(shards))
    rows = _rows(shards)
    config = MaskingConfig(probability=0.15, whole_word=True, span=span)
    collator = MaskingCollator(config, special_ids=manifest.tokenizer["special_ids"],
                               vocab_size=manifest.tokenizer["vocab_size"], seed=0)
    specials = list(manifest.tokenizer["special_ids"].values())
    in_row = np.arange(SEQ_LEN)[None, :] < rows["length"][:, None]
    candidates = (in_row & ~np.isin(rows["input_ids"], specials)).sum(axis=1)
    n = len(candidates)
    shares = []
    for epoch in range(epochs):
        positions = collator.collate(rows, np.arange(n), epoch)["masked_positions"].numpy()
        shares.append(np.bincount(positions // SEQ_LEN, minlength=n) / candidates)
    return np.concatenate(shares)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("span", [False, True], ids=["whole-word", "span"])
def test_masking_masks_about_the_configured_share_of_chinese_rows(kind, span, zh_shards):
    shares = masked_shares(zh_shards[kind], span)
    assert 0.12 <= shares.mean() <= 0.18, (shares.mean(), shares.std())
    assert (shares == 0).mean() < 0.05  # hardly a row without a masked token


@pytest.mark.parametrize("kind", KINDS)
def test_segmenter_word_starts_reach_the_shards(kind, zh_shards, zh_tokenizer_dirs):
    manifest = Manifest.load(str(zh_shards[kind]))
    assert manifest.counts["segmented_documents"] == len(ZH_DOCS)
    assert manifest.build["identity"]["segmenter"] == segment.segmenter_identity()
    rows = _rows(zh_shards[kind])
    tokens = rows["word_start"][np.arange(SEQ_LEN)[None, :] < rows["length"][:, None]]
    # A word of 1-3 characters on average: neither one word per character (WordPiece alone, ~0.98) nor
    # one per run of characters between spaces (SentencePiece alone, ~0.14).
    assert 0.45 < tokens.mean() < 0.85


def test_an_english_build_has_no_segmenter_in_its_identity(
    split_corpus_small, wordpiece_tokenizer_dir, tmp_path
):
    _build([split_corpus_small], wordpiece_tokenizer_dir, tmp_path / "en")
    manifest = Manifest.load(str(tmp_path / "en"))
    assert "segmenter" not in manifest.build["identity"]
    assert not any(segment.is_segmentation_count(k) for k in manifest.counts)


@pytest.fixture
def split_corpus_small(sample_documents, tmp_path) -> Path:
    out = tmp_path / "en_corpus"
    out.mkdir()
    (out / "a.txt").write_text("\n\n".join(sample_documents[:30]), encoding="utf-8")
    return out


def _hard_wrap(paragraph: str, width: int = 20) -> str:
    """Break `paragraph` about every `width` characters, only between two CJK characters (as a hard-
    wrapping editor of Chinese text does: no space belongs there)."""
    out, since = [], 0
    for i, char in enumerate(paragraph):
        out.append(char)
        since += 1
        if since >= width and i + 1 < len(paragraph) and _CJK.match(char) and _CJK.match(paragraph[i + 1]):
            out.append("\n")
            since = 0
    return "".join(out)


@pytest.mark.parametrize("kind", KINDS)
def test_hard_wrapped_chinese_builds_the_same_rows_as_unwrapped(
    kind, zh_corpus, zh_tokenizer_dirs, zh_shards, tmp_path
):
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    for i in range(2):
        docs = ["\n".join(_hard_wrap(p) for p in doc.split("\n")) for doc in ZH_DOCS[i::2]]
        (wrapped / f"zh-{i}.txt").write_text("\n\n".join(docs), encoding="utf-8")
    before, after = (d.joinpath("zh-0.txt").read_text().count("\n") for d in (zh_corpus, wrapped))
    assert after > 2 * before  # most paragraphs are now several lines
    _build([wrapped], zh_tokenizer_dirs[kind], tmp_path / "out")
    for key in ("input_ids", "word_start", "length"):
        np.testing.assert_array_equal(_rows(tmp_path / "out")[key], _rows(zh_shards[kind])[key])
    assert Manifest.load(str(tmp_path / "out")).counts["cjk_line_breaks_joined"] == len(ZH_DOCS)


def test_without_the_segmenter_a_build_warns_once_counts_and_is_kept_apart(
    zh_corpus, zh_tokenizer_dirs, zh_shards, tmp_path, monkeypatch, caplog
):
    tokenizer = zh_tokenizer_dirs["wordpiece"]
    out = tmp_path / "unsegmented"
    with monkeypatch.context() as m:
        m.setattr(segment, "segmenter_identity", lambda: None)  # as if rjieba were not installed
        caplog.set_level("WARNING")
        _build([zh_corpus], tokenizer, out)
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warning.startswith(
            f"{len(ZH_DOCS)} documents in scripts written without spaces (12 in Chinese)"
        )
        assert "pip install 'mlm-pretrain[zh]'" in warning
        manifest = Manifest.load(str(out))
        assert manifest.counts["unsegmented_chinese_documents"] == len(ZH_DOCS)
        assert "segmented_documents" not in manifest.counts and "segmenter" not in manifest.build["identity"]
        assert _rows(out)["word_start"].mean() > _rows(zh_shards["wordpiece"])["word_start"].mean()
    with pytest.raises(DataError, match=r"holds a build whose 12 Chinese documents were not word-segmented"):
        _build([zh_corpus], tokenizer, out)  # the segmenter is back: not the same build any more

    parts = []
    for i, segmenter in enumerate([None, segment.segmenter_identity()]):
        with monkeypatch.context() as m:
            m.setattr(segment, "segmenter_identity", lambda s=segmenter: s)
            parts.append(tmp_path / f"part{i}")
            _build([zh_corpus], tokenizer, parts[-1], num_partitions=2, partition_index=i)
    with pytest.raises(DataError, match=rf"{parts[0]}: 6 of its Chinese documents were not word-segmented"):
        merge_parts([str(p) for p in parts], str(tmp_path / "merged"))


def test_a_build_resumed_without_the_segmenter_tokenizes_its_units_again(
    zh_corpus, zh_tokenizer_dirs, tmp_path, monkeypatch
):
    from data_pipeline.build import pipeline as build

    tokenizer = zh_tokenizer_dirs["sentencepiece-unigram"]
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(build, "_pack", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            _build([zh_corpus], tokenizer, out)  # every unit tokenized with the segmenter
    monkeypatch.setattr(segment, "segmenter_identity", lambda: None)
    _build([zh_corpus], tokenizer, out)
    _build([zh_corpus], tokenizer, tmp_path / "fresh")
    assert Manifest.load(str(out)).counts == Manifest.load(str(tmp_path / "fresh")).counts
    for key in ("input_ids", "word_start"):
        np.testing.assert_array_equal(_rows(out)[key], _rows(tmp_path / "fresh")[key])
    assert json.loads((out / "manifest.json").read_text())["counts"]["unsegmented_chinese_documents"] == 12
