"""segment: Chinese word starts from the segmenter, script detection, CJK-aware sentence ends.

On real Chinese prose (the man-db zh_CN fixture) with WordPiece, SentencePiece and byte-level BPE
tokenizers trained on it.
"""

import importlib.metadata
import re
import sys

import numpy as np
import pytest
import rjieba
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from data_pipeline.tokenizer.load import load_tokenizer
from data_pipeline.tokenizer.segment import (
    WordStartEncoder,
    join_cjk_line_breaks,
    last_sentence_end,
    segmenter_available,
    segmenter_identity,
    sentence_ends,
    split_sentences,
    unsegmented_warning,
    unspaced_script,
)
from tests.helpers.paths import ZH_FIXTURE

ZH_DOCS = ZH_FIXTURE.read_text(encoding="utf-8").split("\n\n")
ZH_LINES = [line for doc in ZH_DOCS for line in doc.split("\n")]
# Fixture lines made only of CJK characters (Han, CJK punctuation, fullwidth forms).
PURE_CJK = [line for line in ZH_LINES if re.fullmatch(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]+", line)]
# The splitter builds used before CJK sentence ends: the reference that Western text still splits alike.
_OLD_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*\n\s*")


def old_split_sentences(text: str) -> list[str]:
    ends = [m.end() for m in _OLD_SENTENCE_END.finditer(text)]
    pieces = [text[a:b].strip() for a, b in zip([0, *ends], [*ends, len(text)], strict=True)]
    return [p for p in pieces if p]


JAPANESE = "日本語の文章には、単語の間に空白がありません。ひらがなとカタカナと漢字を使います。"
THAI = "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ แต่เว้นวรรคระหว่างประโยค"


@pytest.fixture(scope="module")
def zh_tokenizers(zh_tokenizer_dirs, tmp_path_factory):
    """kind -> LoadedTokenizer trained on the Chinese fixture (conftest.py; plus a byte-level BPE one)."""
    root = tmp_path_factory.mktemp("segment_tokenizers")
    out = {kind: load_tokenizer(path) for kind, path in zh_tokenizer_dirs.items()}
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend.train_from_iterator(ZH_LINES, trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    roles = dict(bos_token="<s>", cls_token="<s>", pad_token="<pad>", sep_token="</s>", eos_token="</s>")
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", mask_token="<mask>", **roles
    ).save_pretrained(str(root / "byte-level"))
    out["byte-level"] = load_tokenizer(str(root / "byte-level"))
    return out


def units(tokenizer, ids, starts, decode=True):
    """The tokens grouped into words by the word_start flags: decoded, or their strings joined."""
    groups, current = [], []
    for token_id, start in zip(ids.tolist(), starts.tolist(), strict=True):
        if start and current:
            groups.append(current)
            current = []
        current.append(token_id)
    groups.append(current)
    if not decode:
        return ["".join(tokenizer.backend.id_to_token(i).removeprefix("##") for i in g) for g in groups]
    return [tokenizer.backend.decode(g) for g in groups]


def test_segmenter_is_installed_and_identified():
    assert segmenter_available()
    assert segmenter_identity() == {"name": "rjieba", "version": importlib.metadata.version("rjieba")}


def test_script_detection():
    assert [unspaced_script(doc) for doc in ZH_DOCS] == ["chinese"] * len(ZH_DOCS)  # with many Latin options
    assert unspaced_script(JAPANESE) == "japanese"
    assert unspaced_script(THAI) == "thai"
    assert unspaced_script("An English text that names 中文 once, and 日本語 once, in passing.") is None
    assert unspaced_script("") is None


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece-unigram", "byte-level"])
def test_encoder_is_a_drop_in_with_the_same_ids(kind, zh_tokenizers, sample_documents):
    tokenizer = zh_tokenizers[kind]
    texts = ZH_DOCS + sample_documents[:5] + [JAPANESE, ""]
    encoder = WordStartEncoder(tokenizer)
    encoded = encoder.encode_batch(texts)
    plain = tokenizer.encode_batch(texts)
    assert [ids.tolist() for ids, _ in encoded] == [ids.tolist() for ids, _ in plain]
    for (_, starts), (_, plain_starts) in zip(encoded[len(ZH_DOCS) :], plain[len(ZH_DOCS) :], strict=True):
        assert starts.tolist() == plain_starts.tolist()  # English and Japanese keep the tokenizer's flags
    assert all(starts.dtype == np.uint8 and (len(starts) == 0 or starts[0] == 1) for _, starts in encoded)
    assert encoder.counts == {"segmented_documents": len(ZH_DOCS), "unsegmented_japanese_documents": 1}
    assert encoder.identity == segmenter_identity()


def test_sentences_of_a_chinese_document_are_segmented_with_its_script(zh_tokenizers):
    """NSP/SOP encode sentences: the document's script decides, and documents are counted once."""
    tokenizer = zh_tokenizers["wordpiece"]
    encoder = WordStartEncoder(tokenizer)
    documents = ZH_DOCS[3:6]
    scripts = encoder.document_scripts(documents)
    sentences = [split_sentences(doc) for doc in documents]
    flat = [s for doc in sentences for s in doc]
    piece_scripts = [script for script, doc in zip(scripts, sentences, strict=True) for _ in doc]
    encoded = encoder.encode_batch(flat, scripts=piece_scripts)
    assert encoder.counts == {"segmented_documents": 3}
    latin_heavy = [
        i for i, s in enumerate(flat) if unspaced_script(s) is None and re.search(r"[\u4e00-\u9fff]{2}", s)
    ]
    assert len(latin_heavy) > 5  # sentences that alone would not count as Chinese ("等效于 apropos printf.")
    detected_alone = WordStartEncoder(tokenizer).encode_batch([flat[i] for i in latin_heavy])
    assert any(
        encoded[i][1].tolist() != alone[1].tolist()
        for i, alone in zip(latin_heavy, detected_alone, strict=True)
    )
    for i in latin_heavy:
        ids, starts = encoded[i]
        assert (
            starts.tolist()
            == WordStartEncoder(tokenizer).encode_batch([flat[i]], scripts=["chinese"])[0][1].tolist()
        )


def test_wordpiece_words_are_the_segmenters_words(zh_tokenizers):
    """WordPiece makes every character a token; grouped by word_start they are jieba's words again."""
    tokenizer = zh_tokenizers["wordpiece"]
    assert len(PURE_CJK) > 20
    encoded = WordStartEncoder(tokenizer).encode_batch(PURE_CJK)
    for line, (ids, starts) in zip(PURE_CJK, encoded, strict=True):
        assert units(tokenizer, ids, starts, decode=False) == rjieba.cut(line)
    _, plain_starts = tokenizer.encode_batch(PURE_CJK[:1])[0]
    assert plain_starts.all()  # without the segmenter every character was a word


def test_sentencepiece_word_starts_follow_segmenter_boundaries(zh_tokenizers):
    tokenizer = zh_tokenizers["sentencepiece-unigram"]
    marker = tokenizer.word_marker_id
    for doc, (ids, starts) in zip(ZH_DOCS, WordStartEncoder(tokenizer).encode_batch(ZH_DOCS), strict=True):
        boundaries = set(np.cumsum([0] + [len(w) for w in rjieba.cut(doc)]).tolist())
        encoding = tokenizer.backend.encode(doc, add_special_tokens=False)
        for i, (token_id, (begin, _)) in enumerate(zip(encoding.ids, encoding.offsets, strict=True)):
            if i and starts[i] and token_id != marker:
                assert begin in boundaries, (doc[begin : begin + 10], encoding.tokens[i])
            if i and ids[i - 1] == marker and token_id != marker:
                assert starts[i] == 0  # '▁' and the word after it are one unit


def test_byte_level_tokens_inside_one_character_never_start_a_word(zh_tokenizers):
    tokenizer = zh_tokenizers["byte-level"]
    encoded = WordStartEncoder(tokenizer).encode_batch(ZH_DOCS[:3])
    for doc, (ids, starts) in zip(ZH_DOCS[:3], encoded, strict=True):
        offsets = [o[0] for o in tokenizer.backend.encode(doc, add_special_tokens=False).offsets]
        same = [i for i in range(1, len(offsets)) if offsets[i] == offsets[i - 1]]
        assert same and not starts[same].any()
        assert all(unit for unit in units(tokenizer, ids, starts))  # no unit decodes to a broken character
        assert "�" not in "".join(units(tokenizer, ids, starts))


def word_start_fraction(encoded):
    return float(np.concatenate([starts for _, starts in encoded]).mean())


def test_word_start_fraction_on_real_chinese(zh_tokenizers):
    """What the segmenter changes for whole-word masking (figures in docs/data_pipeline.md): SentencePiece
    flagged only pieces after a space, WordPiece every character."""
    fractions = {}
    for kind in ("wordpiece", "sentencepiece-unigram"):
        tokenizer = zh_tokenizers[kind]
        fractions[kind] = (
            word_start_fraction(tokenizer.encode_batch(ZH_DOCS)),
            word_start_fraction(WordStartEncoder(tokenizer).encode_batch(ZH_DOCS)),
        )
    without, with_segmenter = fractions["sentencepiece-unigram"]
    assert without < 0.25 and 0.6 < with_segmenter < 0.9
    without, with_segmenter = fractions["wordpiece"]
    assert without > 0.95 and 0.5 < with_segmenter < 0.75


def test_without_the_segmenter_documents_are_counted_and_the_warning_says_what_to_install(
    zh_tokenizers, monkeypatch
):
    monkeypatch.setitem(sys.modules, "rjieba", None)  # as if not installed: import rjieba fails
    assert not segmenter_available() and segmenter_identity() is None
    tokenizer = zh_tokenizers["sentencepiece-unigram"]
    encoder = WordStartEncoder(tokenizer)
    encoded = encoder.encode_batch(ZH_DOCS + [JAPANESE, "plain English"])
    assert [s.tolist() for _, s in encoded] == [
        s.tolist() for _, s in tokenizer.encode_batch(ZH_DOCS + [JAPANESE, "plain English"])
    ]
    assert encoder.counts == {
        "unsegmented_chinese_documents": len(ZH_DOCS),
        "unsegmented_japanese_documents": 1,
    }
    message = unsegmented_warning(encoder.counts)
    assert message.startswith(f"{len(ZH_DOCS) + 1} documents in scripts written without spaces")
    assert "12 in Chinese" in message and "pip install 'mlm-pretrain[zh]'" in message
    assert unsegmented_warning({"segmented_documents": 5}) is None
    with pytest.raises(ModuleNotFoundError, match=r"mlm-pretrain\[zh\]"):
        WordStartEncoder(tokenizer, segment=True)


# ------------------------------------------------------------------------------------- sentence ends


def test_chinese_sentences_end_without_whitespace():
    paragraph = (
        "man 是系统的手册分页程序。指定给 man 的页选项通常是程序、工具或函数名！真的吗？是的；就这样……好"
    )
    assert split_sentences(paragraph) == [
        "man 是系统的手册分页程序。",
        "指定给 man 的页选项通常是程序、工具或函数名！",
        "真的吗？",
        "是的；",
        "就这样……",
        "好",
    ]
    assert split_sentences("他说：“你好。”然后走了。") == ["他说：“你好。”", "然后走了。"]
    assert split_sentences("好!然后呢?没了") == ["好!", "然后呢?", "没了"]  # ASCII marks right after Han
    assert split_sentences("版本３．１４发布。") == ["版本３．１４发布。"]  # a fullwidth decimal point


def test_fixture_sentences():
    ends = sum(len(re.findall(r"[。！？；]", doc)) for doc in ZH_DOCS)
    sentences = [s for doc in ZH_DOCS for s in split_sentences(doc)]
    assert len(sentences) >= ends  # every 。！？； ends one (paragraph breaks end more)
    assert len(old_split_sentences(ZH_DOCS[3])) < len(split_sentences(ZH_DOCS[3])) / 3  # the old regex


def test_western_sentences_split_as_before(sample_documents):
    for doc in sample_documents[:60]:
        assert split_sentences(doc) == old_split_sentences(doc)
    assert split_sentences("Pi is 3.14 e.g.x here. Next one!  And (this.) last") == [
        "Pi is 3.14 e.g.x here.",
        "Next one!",
        "And (this.)",
        "last",
    ]
    assert split_sentences("Wait… what? Yes.\n\nNew paragraph") == ["Wait…", "what?", "Yes.", "New paragraph"]


def test_other_scripts_sentence_marks():
    assert split_sentences("यह एक वाक्य है। यह दूसरा है।") == ["यह एक वाक्य है।", "यह दूसरा है।"]
    assert split_sentences("هل هذا سؤال؟ نعم.") == ["هل هذا سؤال؟", "نعم."]


def test_sentence_end_positions_for_cutting_long_documents():
    text = "第一句。第二句！ Third one. fourth"
    assert list(sentence_ends(text)) == [4, 8, 19]
    assert text[:8] == "第一句。第二句！"
    assert last_sentence_end(text) == 19
    assert last_sentence_end(text, 0, 10) == 8
    assert last_sentence_end(text, 9, 15) is None
    assert last_sentence_end("no end here") is None


def test_join_cjk_line_breaks():
    assert join_cjk_line_breaks("手册分页\n程序。下一\t\n 行") == "手册分页程序。下一行"
    assert join_cjk_line_breaks("段落一。\n\n段落二") == "段落一。\n\n段落二"
    assert (
        join_cjk_line_breaks("English line\n中文 and 中文\nEnglish") == "English line\n中文 and 中文\nEnglish"
    )
    for line in PURE_CJK[:10]:  # real paragraphs, hard-wrapped every 20 characters, come back whole
        wrapped = "\n".join(line[i : i + 20] for i in range(0, len(line), 20))
        assert join_cjk_line_breaks(wrapped) == line
