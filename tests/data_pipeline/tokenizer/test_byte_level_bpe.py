"""`mlm-data tokenizer --kind bpe`: RoBERTa's byte-level BPE, as transformers and our pipeline load it."""

import filecmp
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, RobertaTokenizer, RobertaTokenizerFast

from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.errors import DataError
from data_pipeline.shards import ShardReader
from data_pipeline.tokenizer.load import SpecialIds, load_tokenizer, train_tokenizer

ROBERTA_IDS = SpecialIds(pad=1, unk=3, cls=0, sep=2, mask=4)


def test_loads_in_autotokenizer_as_roberta_with_its_specials(byte_level_bpe_dir):
    auto = AutoTokenizer.from_pretrained(byte_level_bpe_dir)
    assert isinstance(auto, RobertaTokenizerFast) and len(auto) == 1000
    assert auto.convert_ids_to_tokens(list(range(5))) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (auto.cls_token, auto.sep_token, auto.pad_token, auto.unk_token, auto.mask_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
        "<mask>",
    )
    # RoBERTa's conventions: no prefix space (the first word has no Ġ), <s> A </s></s> B </s> for pairs,
    # and <mask> takes the space before it.
    assert auto.tokenize("the class")[0] == "the" and auto.tokenize("the class")[1] == "Ġclass"
    pair = auto("one", "two")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3 and pair[-1] == 2
    masked = auto("the <mask> class", add_special_tokens=False)["input_ids"]
    assert auto.convert_ids_to_tokens(masked) == ["the", "<mask>", "Ġclass"]
    assert load_tokenizer(byte_level_bpe_dir).special_ids == ROBERTA_IDS


def test_word_starts_are_where_the_byte_level_words_begin(byte_level_bpe_dir):
    ours = load_tokenizer(byte_level_bpe_dir)
    text = "Deserialization of subclasses, it's 2026\n\nmetaclass"
    ((ids, starts),) = ours.encode_batch([text])
    offsets = [start for start, _ in ours.backend.encode(text, add_special_tokens=False).offsets]

    # A word of the GPT-2 split: a run of letters (with the one space before it), of digits, of other
    # symbols, or an 's contraction. A piece starts a word where its own run starts: the text's start,
    # after whitespace, or at a change of class.
    def kind(ch):
        return "space" if ch.isspace() else "letter" if ch.isalpha() else "digit" if ch.isdigit() else "other"

    expected = []
    for off in offsets:
        ch, before = text[off], text[off - 1] if off else None
        starts_run = before is None or kind(before) != kind(ch) or ch.isspace() or text[off : off + 2] == "'s"
        expected.append(int(starts_run))
    assert starts.tolist() == expected
    tokens = ours.backend.encode(text, add_special_tokens=False).tokens
    assert all(starts[i] for i, token in enumerate(tokens) if token.startswith("Ġ"))  # every spaced word
    assert 0 < starts.sum() < len(ids)  # and some pieces continue a word
    assert np.array_equal(
        ids, AutoTokenizer.from_pretrained(byte_level_bpe_dir)(text, add_special_tokens=False)["input_ids"]
    )


def test_two_trainings_on_the_same_corpus_are_byte_equal(sample_corpus_dir, byte_level_bpe_dir, tmp_path):
    again = tmp_path / "again"
    train_tokenizer([sample_corpus_dir], "bpe", 1000, str(again))
    names = sorted(os.listdir(byte_level_bpe_dir))
    assert names == sorted(os.listdir(again)) and "tokenizer.json" in names
    match, mismatch, errors = filecmp.cmpfiles(byte_level_bpe_dir, again, names, shallow=False)
    assert (mismatch, errors) == ([], []) and match == names


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"vocab_size": 200}, "too small for a byte-level BPE: it needs at least 262"),
        ({"lowercase": True}, "--lowercase is not available for --kind bpe"),
        ({"byte_fallback": True}, "SentencePiece options (not for bpe)"),
    ],
)
def test_bad_options_are_refused_before_reading(options, message, tmp_path):
    kwargs = {"vocab_size": 1000, **options}
    with pytest.raises(DataError, match=re.escape(message)):
        train_tokenizer(
            [str(tmp_path / "absent")], "bpe", kwargs.pop("vocab_size"), str(tmp_path / "t"), **kwargs
        )


def _roberta_dir_saved_by_transformers(source_dir: str, out_dir: str) -> str:
    """The vocabulary and merges of `source_dir` saved by transformers' own RobertaTokenizer (as a RoBERTa
    checkpoint's tokenizer dir is: its class rebuilds the pipeline, our tokenizer.json is not read as is)."""
    model = json.loads(Path(source_dir, "tokenizer.json").read_text())["model"]
    RobertaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]]).save_pretrained(
        out_dir
    )
    return out_dir


@pytest.mark.parametrize("saved_by", ["mlm-data", "transformers"])
def test_shards_build_from_a_roberta_dir(saved_by, sample_corpus_dir, byte_level_bpe_dir, tmp_path):
    tokenizer_dir = byte_level_bpe_dir
    if saved_by == "transformers":
        tokenizer_dir = _roberta_dir_saved_by_transformers(byte_level_bpe_dir, str(tmp_path / "roberta"))
    run_build(
        BuildConfig(
            inputs=[sample_corpus_dir], tokenizer=tokenizer_dir, out=str(tmp_path / "shards"), seq_len=64
        )
    )
    reader = ShardReader(str(tmp_path / "shards"))
    assert reader.special_ids == ROBERTA_IDS.to_dict() and not reader.has_pairs
    rows = reader.take(np.arange(len(reader)))
    assert (rows["input_ids"][:, 0] == 0).all()  # every row opens with <s>
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    corpus = "".join(Path(sample_corpus_dir, name).read_text() for name in os.listdir(sample_corpus_dir))
    for row, length in zip(rows["input_ids"][:20], rows["length"][:20], strict=True):
        # the row's text between its specials is corpus text, as the tokenizer decodes it
        pieces = auto.decode(row[1:length]).split("</s>")
        assert all(piece in corpus for piece in pieces) and sum(map(len, pieces)) > 40
    assert ((rows["input_ids"] == 2) <= (rows["word_start"] == 1)).all()  # </s> starts a word
