"""SentencePiece training for CJK: byte fallback, character coverage, and fill-mask without stray '▁'.

Tokenizers are trained on the real Chinese prose fixture (man-db's zh_CN manual pages).
"""

import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, pipeline

from data_pipeline.errors import DataError
from data_pipeline.tokenizer.load import load_tokenizer, train_tokenizer
from tests.helpers.paths import ZH_FIXTURE

ZH_FIXTURE = str(ZH_FIXTURE)
SPM_KINDS = ["sentencepiece-unigram", "sentencepiece-bpe"]
RARE = "罕见的字：龘靐齉，还有 emoji 😀。"  # characters the fixture does not have


@pytest.fixture(scope="module")
def zh_dirs(tmp_path_factory):
    """(kind, byte_fallback) -> a tokenizer dir trained on the Chinese fixture."""
    root = tmp_path_factory.mktemp("zh_tokenizers")
    dirs = {}
    for kind in SPM_KINDS:
        for byte_fallback in (False, True):
            path = str(root / f"{kind}-{byte_fallback}")
            train_tokenizer([ZH_FIXTURE], kind, 1200, path, byte_fallback=byte_fallback)
            dirs[kind, byte_fallback] = path
    return dirs


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_byte_fallback_encodes_rare_characters_as_bytes_not_unk(kind, zh_dirs):
    plain, with_bytes = load_tokenizer(zh_dirs[kind, False]), load_tokenizer(zh_dirs[kind, True])
    ((ids, _),) = plain.encode_batch([RARE])
    assert plain.special_ids.unk in ids.tolist()
    ((ids, _),) = with_bytes.encode_batch([RARE])
    assert with_bytes.special_ids.unk not in ids.tolist()
    tokens = [with_bytes.backend.id_to_token(i) for i in ids.tolist()]
    assert "<0xF0>" in tokens  # the emoji's first UTF-8 byte
    normalized = with_bytes.backend.normalizer.normalize_str(RARE)
    assert with_bytes.backend.decode(ids.tolist()) == normalized  # the bytes decode back to the characters


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_byte_fallback_tokenizer_segments_like_the_sentencepiece_library(kind, zh_dirs):
    path = zh_dirs[kind, True]
    library = spm.SentencePieceProcessor(model_file=os.path.join(path, "sentencepiece.model"))
    ours = load_tokenizer(path)
    lines = [line for line in Path(ZH_FIXTURE).read_text(encoding="utf-8").split("\n") if line] + [RARE]
    encoded = ours.encode_batch(lines)
    expected = [library.encode(ours.backend.normalizer.normalize_str(line).strip()) for line in lines]
    same = sum(ids.tolist() == e for (ids, _), e in zip(encoded, expected, strict=True))
    assert same >= 0.99 * len(lines)
    assert encoded[-1][0].tolist() == expected[-1]  # the byte pieces too
    # And transformers agrees with both (literal specials as text, as the pipeline encodes).
    auto = AutoTokenizer.from_pretrained(path)
    assert auto(lines, add_special_tokens=False, split_special_tokens=True)["input_ids"] == [
        ids.tolist() for ids, _ in encoded
    ]


def test_character_coverage_sets_how_much_of_the_alphabet_gets_a_piece(tmp_path):
    def single_han_pieces(coverage):
        path = str(tmp_path / str(coverage))
        train_tokenizer([ZH_FIXTURE], "sentencepiece-unigram", 1200, path, character_coverage=coverage)
        vocab = load_tokenizer(path).backend.get_vocab()
        return {
            p.lstrip("▁") for p in vocab if len(p.lstrip("▁")) == 1 and "\u4e00" <= p.lstrip("▁") <= "\u9fff"
        }

    full, reduced = single_han_pieces(1.0), single_han_pieces(0.98)
    assert len(reduced) < 0.9 * len(full)
    assert reduced < full


def test_sentencepiece_options_are_refused_for_wordpiece_and_checked(tmp_path):
    with pytest.raises(DataError, match="SentencePiece options"):
        train_tokenizer([ZH_FIXTURE], "wordpiece", 1200, str(tmp_path / "a"), byte_fallback=True)
    with pytest.raises(DataError, match=r"character coverage 0.9 must be in \[0.98, 1\]"):
        train_tokenizer([ZH_FIXTURE], "sentencepiece-bpe", 1200, str(tmp_path / "b"), character_coverage=0.9)
    assert not os.listdir(tmp_path)


def _around_mask(tokenizer, text):
    """The pieces before and after [MASK] in `text`, each side joined into one string."""
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    i = tokens.index("[MASK]")
    return "".join(tokens[:i]), "".join(tokens[i + 1 :])


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_mask_in_text_gets_no_word_start_the_text_does_not_have(kind, zh_dirs):
    """A '▁' marks a word start: at the start of the text and after whitespace, nowhere else. Masked
    pretraining rows look like that, so fill-mask input must too (in transformers, as users run it)."""
    tokenizer = AutoTokenizer.from_pretrained(zh_dirs[kind, False])
    assert _around_mask(tokenizer, "手册[MASK]章节") == ("▁手册", "章节")
    assert _around_mask(tokenizer, "x [MASK] y") == ("▁x", "▁y")
    assert _around_mask(tokenizer, "手册 [MASK]。") == ("▁手册", "。")
    assert _around_mask(tokenizer, "[MASK] 章节") == ("", "▁章节")


def _forced_fill(tokenizer, text, token):
    """fill-mask's top sequence for `text` from a tiny untrained BERT whose output bias picks `token`."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().bias[tokenizer.convert_tokens_to_ids(token)] = 1e4
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    (best,) = fill(text, top_k=1)
    return best["token_str"], best["sequence"]


@pytest.mark.parametrize("kind", SPM_KINDS)
def test_fill_mask_output_is_clean(kind, zh_dirs):
    tokenizer = AutoTokenizer.from_pretrained(zh_dirs[kind, False])
    vocab = tokenizer.get_vocab()
    inside = next(p for p in ("的", "页", "和") if p in vocab)  # a piece that continues a word
    assert _forced_fill(tokenizer, "手册[MASK]章节", inside)[1] == f"手册{inside}章节"
    word = next(p for p in sorted(vocab, key=vocab.get) if p.startswith("▁") and len(p) > 2)
    assert _forced_fill(tokenizer, "x [MASK] y", word) == (word[1:], f"x {word[1:]} y")
    assert _forced_fill(tokenizer, "[MASK]章节", inside)[1] == f"{inside}章节"
