"""tokenizer: training all kinds, AutoTokenizer round trips, word starts, loading foreign HF dirs."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data_pipeline.errors import DataError
from data_pipeline.ingest.clean import CleanConfig, Cleaner
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import Document
from data_pipeline.tokenizer.load import SpecialIds, load_tokenizer, train_tokenizer

SPECIALS = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)


@pytest.fixture(scope="module")
def corpus_texts(sample_documents):
    """30 cleaned documents of the sample corpus."""
    cleaner = Cleaner(CleanConfig(), BuildReport())
    return [
        text for i, doc in enumerate(sample_documents[:30]) for text in cleaner.clean(Document(doc, "x", i))
    ]


@pytest.fixture(scope="module")
def sentencepiece_dirs(unigram_tokenizer_dir, bpe_tokenizer_dir):
    return {"sentencepiece-unigram": unigram_tokenizer_dir, "sentencepiece-bpe": bpe_tokenizer_dir}


def tokenizer_dir(kind, wordpiece_tokenizer_dir, sentencepiece_dirs):
    return wordpiece_tokenizer_dir if kind == "wordpiece" else sentencepiece_dirs[kind]


KINDS = ["wordpiece", "sentencepiece-unigram", "sentencepiece-bpe"]


@pytest.mark.parametrize("kind", KINDS)
def test_trained_tokenizer_reloads_in_transformers_with_same_ids(
    kind, wordpiece_tokenizer_dir, sentencepiece_dirs, corpus_texts
):
    path = tokenizer_dir(kind, wordpiece_tokenizer_dir, sentencepiece_dirs)
    ours = load_tokenizer(path)
    auto = AutoTokenizer.from_pretrained(path)
    assert ours.special_ids == SPECIALS
    assert [
        auto.pad_token_id,
        auto.unk_token_id,
        auto.cls_token_id,
        auto.sep_token_id,
        auto.mask_token_id,
    ] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert ours.vocab_size == len(auto) <= 1000
    encoded = ours.encode_batch(corpus_texts)
    expected = auto(corpus_texts, add_special_tokens=False)["input_ids"]
    assert [ids.tolist() for ids, _ in encoded] == expected
    with_specials = auto(corpus_texts[0])["input_ids"]
    assert with_specials[0] == 2 and with_specials[-1] == 3
    unk_rate = sum(int((ids == 1).sum()) for ids, _ in encoded) / sum(len(ids) for ids, _ in encoded)
    assert unk_rate < 0.01  # trained on this text: almost nothing is unknown


def test_our_dirs_load_without_transformers_start_up(wordpiece_tokenizer_dir, unigram_tokenizer_dir):
    """`mlm-data build` loads our dirs straight from tokenizer.json (the test above shows it is the
    tokenizer transformers would give); importing transformers would cost every build ~2 s."""
    code = (
        "import sys; from data_pipeline.tokenizer.load import load_tokenizer; "
        "[load_tokenizer(d) for d in sys.argv[1:]]; print('transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, wordpiece_tokenizer_dir, unigram_tokenizer_dir],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["sentencepiece-unigram", "sentencepiece-bpe"])
def test_sentencepiece_decodes_back_to_normalised_text(kind, sentencepiece_dirs):
    ours = load_tokenizer(sentencepiece_dirs[kind])
    text = "Return the number of items in a container.\nIt raises   TypeError otherwise."
    ((ids, _),) = ours.encode_batch([text])
    expected = " ".join(text.split())
    assert ours.backend.decode(ids.tolist()) == (expected.lower() if kind.endswith("bpe") else expected)


@pytest.mark.parametrize("kind", ["sentencepiece-unigram", "sentencepiece-bpe"])
def test_converted_sentencepiece_segments_like_the_sentencepiece_library(
    kind, sentencepiece_dirs, sample_documents
):
    import sentencepiece as spm

    path = sentencepiece_dirs[kind]
    library = spm.SentencePieceProcessor(model_file=os.path.join(path, "sentencepiece.model"))
    ours = load_tokenizer(path)
    # Raw lines in (leading indentation included), against the library on the text as it was trained:
    # normalised and stripped.
    lines = [line for doc in sample_documents[:40] for line in doc.split("\n") if line.strip()]
    normalized = [ours.backend.normalizer.normalize_str(line).strip() for line in lines]
    assert sum(line != line.lstrip() for line in lines) > 100
    ours_ids = [ids.tolist() for ids, _ in ours.encode_batch(lines)]
    same = sum(a == library.encode(n) for a, n in zip(ours_ids, normalized, strict=True))
    assert same >= 0.99 * len(normalized) and len(normalized) > 500


@pytest.mark.parametrize("kind", KINDS)
def test_word_start_flags_mark_first_piece_of_each_word(kind, wordpiece_tokenizer_dir, sentencepiece_dirs):
    ours = load_tokenizer(tokenizer_dir(kind, wordpiece_tokenizer_dir, sentencepiece_dirs))
    texts = [
        "Deserialization of unconventional subclasses is discouraged.",
        "",
        "x",
        "x",
        "metaclass inheritance",
    ]
    encoded = ours.encode_batch(texts)
    assert [len(ids) for ids, _ in encoded][1] == 0
    for text, (ids, starts) in zip(texts, encoded, strict=True):
        assert ids.dtype == np.uint32 and starts.dtype == np.uint8 and len(ids) == len(starts)
        tokens = [ours.backend.id_to_token(i) for i in ids.tolist()]
        if kind == "wordpiece":
            expected = [not t.startswith("##") for t in tokens]
        else:
            expected = [t.startswith("▁") for t in tokens]
        assert starts.tolist() == [int(e) for e in expected], (text, tokens)
    assert sum(encoded[0][1]) == len(texts[0].split()) + (kind == "wordpiece")  # BERT splits off the "."
    assert encoded[0][1].sum() < len(encoded[0][0])  # the long words really were split into pieces


def test_literal_special_token_text_is_not_a_special_token(wordpiece_tokenizer):
    text = ["Replace [MASK] and [CLS] in text"]
    ((ids, _),) = wordpiece_tokenizer.encode_batch(text)
    assert not set(ids.tolist()) & {2, 3, 4}
    # Worker processes receive the tokenizer pickled: the setting must survive the trip.
    ((shipped_ids, _),) = pickle.loads(pickle.dumps(wordpiece_tokenizer)).encode_batch(text)
    assert shipped_ids.tolist() == ids.tolist()


def test_fingerprint_stable_and_copy_identical(wordpiece_tokenizer, wordpiece_tokenizer_dir, tmp_path):
    assert load_tokenizer(wordpiece_tokenizer_dir).fingerprint == wordpiece_tokenizer.fingerprint
    wordpiece_tokenizer.save_copy(str(tmp_path / "copy"))
    copy = load_tokenizer(str(tmp_path / "copy"))
    assert copy.fingerprint == wordpiece_tokenizer.fingerprint
    assert sorted(os.listdir(tmp_path / "copy")) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    text = ["The copy encodes identically."]
    assert copy.encode_batch(text)[0][0].tolist() == wordpiece_tokenizer.encode_batch(text)[0][0].tolist()


def tiny_wordpiece(tokens):
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return backend


WORDS = ["the", "quick", "brown", "fox", "##es", "jump", "##s", "over", "lazy", "dog", "."]


def test_foreign_dir_with_saved_truncation_and_padding_does_not_leak(tmp_path):
    backend = tiny_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
    backend.enable_truncation(max_length=4)
    backend.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
    PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=4,
    ).save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["truncation"]["max_length"] == 4 and saved["padding"] is not None  # the trap is set
    ours = load_tokenizer(str(tmp_path))
    ((ids, starts),) = ours.encode_batch(["The quick brown foxes jumps over the lazy dog."])
    assert ids.tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 5, 13, 14, 15]
    assert starts.tolist() == [1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1]


def test_bert_style_vocab_txt_dir_loads(tmp_path):
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    ours = load_tokenizer(str(tmp_path))
    assert ours.special_ids == SpecialIds(pad=0, unk=2, cls=3, sep=4, mask=5)
    ((ids, starts),) = ours.encode_batch(["Quick foxes"])
    assert ids.tolist() == [7, 9, 10] and starts.tolist() == [1, 1, 0]


def test_dir_without_mask_token_is_rejected(tmp_path):
    backend = tiny_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(str(tmp_path))
    with pytest.raises(DataError, match=rf"{tmp_path}: tokenizer lacks a mask token"):
        load_tokenizer(str(tmp_path))


def test_not_a_tokenizer_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match=rf"{tmp_path} is not a tokenizer directory"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="transformers cannot load this tokenizer"):
        load_tokenizer(str(tmp_path))


def test_train_refuses_non_empty_output_and_overwrites_on_request(sample_corpus_dir, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty; pass overwrite=True"):
        train_tokenizer([sample_corpus_dir], "wordpiece", 300, str(out))
    train_tokenizer(
        [sample_corpus_dir], "wordpiece", 300, str(out), overwrite=True, max_training_chars=50_000
    )
    assert sorted(os.listdir(out)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(os.listdir(tmp_path)) == ["tok"]  # no temporary or old directories left behind
    assert load_tokenizer(str(out)).vocab_size == 300


def test_large_input_is_sampled_within_budget(tmp_path):
    # Three files, each with a letter no other file has. Reading only up to the budget (a third of
    # the text) would see the first file only; sampling sees all three.
    for name, letter in (("a", "α"), ("b", "β"), ("c", "γ")):
        docs = [f"{letter}{i} " * 20 + f"common words number {i}." for i in range(200)]
        (tmp_path / f"{name}.txt").write_text("\n\n".join(docs))
    budget = sum(len(t) for t in (tmp_path / "a.txt").read_text().split("\n\n"))
    report = train_tokenizer(
        [str(tmp_path / "*.txt")], "wordpiece", 200, str(tmp_path / "tok"), max_training_chars=budget
    )
    assert 0.7 * budget < report.counts["training_chars"] < budget + 200
    assert report.counts["training_documents"] < 400
    vocab = load_tokenizer(str(tmp_path / "tok")).backend.get_vocab()
    assert {"α", "β", "γ"} <= set(vocab)


def test_train_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n \x07 \n")
    with pytest.raises(DataError, match="no text to train a tokenizer on"):
        train_tokenizer([str(empty)], "wordpiece", 100, str(tmp_path / "out"))
    with pytest.raises(DataError, match="unknown tokenizer kind 'gpt2'"):
        train_tokenizer([str(empty)], "gpt2", 100, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def word_id_starts(encoding):
    words = encoding.word_ids
    return [1] + [int(words[i] != words[i - 1]) for i in range(1, len(words))] if words else []


@pytest.mark.parametrize("kind", KINDS)
def test_fast_word_starts_equal_word_ids(kind, wordpiece_tokenizer_dir, sentencepiece_dirs, corpus_texts):
    # The per-id lookup table must give exactly the word boundaries of the pre-tokenizer (unknown
    # tokens aside: their string carries no marker).
    ours = load_tokenizer(tokenizer_dir(kind, wordpiece_tokenizer_dir, sentencepiece_dirs))
    for text, (ids, starts) in zip(corpus_texts, ours.encode_batch(corpus_texts), strict=True):
        expected = word_id_starts(ours.backend.encode(text, add_special_tokens=False))
        known = ids != ours.special_ids.unk
        assert np.array_equal(starts[known], np.array(expected, dtype=np.uint8)[known])


def test_byte_level_bpe_dir_uses_word_ids(tmp_path, corpus_texts):
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend.train_from_iterator(corpus_texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        cls_token="<s>",
        pad_token="<pad>",
        sep_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    ).save_pretrained(str(tmp_path))
    ours = load_tokenizer(str(tmp_path))
    assert ours.special_ids == SpecialIds(pad=1, unk=3, cls=0, sep=2, mask=4)
    texts = ["Deserialization, of unconventional-subclasses!", "metaclass x"]
    for text, (ids, starts) in zip(texts, ours.encode_batch(texts), strict=True):
        encoding = ours.backend.encode(text, add_special_tokens=False)
        assert ids.tolist() == encoding.ids
        assert starts.tolist() == word_id_starts(encoding)
        assert 0 < starts.sum() < len(ids)


def test_sentencepiece_vocab_too_small_is_a_clear_error(sample_corpus_dir, tmp_path):
    with pytest.raises(DataError, match="Vocabulary size is smaller than required_chars.*--vocab-size"):
        train_tokenizer([sample_corpus_dir], "sentencepiece-unigram", 30, str(tmp_path / "tok"))
    assert os.listdir(tmp_path) == []


def test_old_bert_dir_without_tokenizer_class_copies_its_model_config(tmp_path):
    # Older checkpoints name no tokenizer_class: AutoTokenizer needs config.json's model_type, so the
    # copy in SHARDS_DIR/tokenizer must carry it or it would not load.
    source = tmp_path / "bert"
    source.mkdir()
    (source / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    (source / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": 512})
    )
    (source / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 16}))
    ours = load_tokenizer(str(source))
    ours.save_copy(str(tmp_path / "copy"))
    copy = load_tokenizer(str(tmp_path / "copy"))
    assert sorted(os.listdir(tmp_path / "copy")) == ["config.json", "tokenizer_config.json", "vocab.txt"]
    assert copy.fingerprint == ours.fingerprint
    ((ids, starts),) = copy.encode_batch(["The quick FOXES"])
    assert ids.tolist() == [5, 6, 8, 9] and starts.tolist() == [1, 1, 1, 0]
