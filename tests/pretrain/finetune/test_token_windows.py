"""Word alignment and windows for token classification, with tokenizers the test trains: the tag on each
word's first sub-token for WordPiece, SentencePiece and byte-level BPE (prefix space added), Chinese one
character per word; long sentences split into windows of whole words; entity scores by seqeval."""

from __future__ import annotations

import glob
import os
import sysconfig

import pytest

from data_pipeline.samples.python_source import docstrings_of
from pretrain.finetune.entity_metrics import entity_scores, summarise_entities
from pretrain.finetune.token_windows import IGNORED, encode_words, with_prefix_space, words_tags

WORDS = ["Return", "the", "value", "of", "os", ".", "path", "or", "raise", "ValueError", "中", "文"]
TAGS = [0, 0, 0, 0, 1, 2, 2, 0, 0, 3, 4, 5]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """{kind: tokenizer dir} for WordPiece, SentencePiece unigram and a byte-level BPE (tokenizer.json
    only, add_prefix_space false, as many GPT-2-style tokenizers are saved)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from data_pipeline.tokenizer.training import train_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = [
        d for path in sorted(glob.glob(os.path.join(stdlib, "asyncio", "*.py"))) for d in docstrings_of(path)
    ]
    (root / "corpus").mkdir()
    corpus = root / "corpus" / "text.txt"
    corpus.write_text("\n\n".join(texts + ["中文分词的句子。"] * 20), encoding="utf-8")
    dirs = {}
    for kind in ("wordpiece", "sentencepiece-unigram"):
        train_tokenizer([str(root / "corpus")], kind, 400, str(root / kind))
        dirs[kind] = str(root / kind)
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpus)], vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    fast.save_pretrained(str(root / "byte-bpe"))
    dirs["byte-bpe"] = str(root / "byte-bpe")
    return dirs


def _tokenizer(path):
    from transformers import AutoTokenizer

    return with_prefix_space(AutoTokenizer.from_pretrained(path))


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece-unigram", "byte-bpe"])
def test_each_tag_sits_on_its_words_first_sub_token(tokenizer_dirs, kind):
    tokenizer = _tokenizer(tokenizer_dirs[kind])
    encoded = encode_words(tokenizer, [WORDS], [TAGS], max_seq_len=128)
    assert encoded.counts == {"split_sentences": 0, "windows": 1, "words_cut": 0, "words_without_tokens": 0}
    (window,) = encoded.windows
    labelled = [(p, label) for p, label in enumerate(window.labels) if label != IGNORED]
    assert [label for _, label in labelled] == TAGS  # one label per word, in order
    assert [p for p, _ in labelled] == window.first_token
    tokens = tokenizer.convert_ids_to_tokens(window.input_ids)
    specials = set(tokenizer.all_special_ids)
    text_end = max(p for p, i in enumerate(window.input_ids) if i not in specials) + 1
    for k, start in enumerate(window.first_token):
        end = window.first_token[k + 1] if k + 1 < len(WORDS) else text_end
        piece = tokenizer.convert_tokens_to_string(tokens[start:end]).strip()
        assert piece == WORDS[k]  # the labelled position starts exactly the word's sub-tokens
    if kind == "byte-bpe":
        # Every word starts with the space marker, as words do in running text the model was trained on.
        assert all(tokens[p].startswith("Ġ") for p in window.first_token)
    if kind == "wordpiece":
        assert tokens[window.first_token[-2]] == "中"  # Chinese: one character, one word, one label


def test_long_sentences_become_windows_of_whole_words(tokenizer_dirs):
    tokenizer = _tokenizer(tokenizer_dirs["wordpiece"])
    sentences = [WORDS * 5, WORDS[:3]]
    tags = [TAGS * 5, TAGS[:3]]
    encoded = encode_words(tokenizer, sentences, tags, max_seq_len=16)
    assert encoded.counts["split_sentences"] == 1 and encoded.counts["windows"] > 3
    assert all(len(w.input_ids) <= 16 for w in encoded.windows)
    # Every word of every sentence is labelled exactly once, in one window, in order.
    seen = [[] for _ in sentences]
    for w in encoded.windows:
        assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
        seen[w.sentence] += [label for label in w.labels if label != IGNORED]
    assert seen == tags
    # Predictions at the labelled positions join back into per-word tags of each whole sentence.
    predictions = [[label if label != IGNORED else 0 for label in w.labels] for w in encoded.windows]
    assert words_tags(encoded, predictions, [len(s) for s in sentences]) == tags


def test_a_word_longer_than_a_window_is_cut_and_counted(tokenizer_dirs):
    tokenizer = _tokenizer(tokenizer_dirs["wordpiece"])
    long_word = "x" * 40 + "qz" * 20  # far more sub-tokens than fit
    encoded = encode_words(tokenizer, [["a", long_word, "b"]], [[0, 1, 0]], max_seq_len=8)
    assert encoded.counts["words_cut"] == 1 and encoded.counts["windows"] == 3
    assert [w.labels.count(1) for w in encoded.windows] == [0, 1, 0]


def test_entity_scores_follow_the_scheme():
    true = [["B-ARG", "I-ARG", "O", "B-MOD"], ["O", "B-EXC"]]
    pred = [["B-ARG", "I-ARG", "O", "O"], ["O", "B-ARG"]]
    scores = entity_scores(true, pred, "BIO")
    assert scores["per_type"]["ARG"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert scores["per_type"]["MOD"]["recall"] == 0.0 and scores["per_type"]["EXC"]["support"] == 1
    assert (scores["precision"], scores["recall"]) == (0.5, pytest.approx(1 / 3))
    assert scores["word_accuracy"] == pytest.approx(4 / 6)
    # An orphan I- is an entity in BIO (conlleval); in strict BIOES an ill-formed run is no entity.
    assert entity_scores([["I-ARG", "O"]], [["I-ARG", "O"]], "BIO")["f1"] == 1.0
    strict = entity_scores([["S-ARG", "I-ARG"]], [["S-ARG", "I-ARG"]], "BIOES")
    assert strict["per_type"]["ARG"]["support"] == 1 and strict["f1"] == 1.0
    runs = [{**entity_scores(true, pred, "BIO"), "seed": 0}, {**entity_scores(true, true, "BIO"), "seed": 1}]
    summary = summarise_entities(runs)
    assert summary["f1_mean"] == pytest.approx((scores["f1"] + 1.0) / 2)
    assert summary["per_type"]["MOD"] == pytest.approx(
        {
            "support": 1,
            "precision_mean": 0.5,
            "precision_std": 2**-0.5,
            "recall_mean": 0.5,
            "recall_std": 2**-0.5,
            "f1_mean": 0.5,
            "f1_std": 2**-0.5,
        }
    )
