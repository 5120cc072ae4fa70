"""clean: control characters, normalisation, empty and overlong documents, and the report's counts."""

import pytest

from data_pipeline.ingest.clean import CleanConfig, Cleaner, split_text
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.sources import Document


def clean(text, **config):
    report = BuildReport()
    pieces = Cleaner(CleanConfig(**config), report).clean(Document(text, "corpus.txt", 7))
    return pieces, report


def test_clean_text_passes_through_unchanged():
    pieces, report = clean("A plain document.\n\tIndented line.")
    assert pieces == ["A plain document.\n\tIndented line."]
    assert report.counts == {"documents": 1}


def test_control_characters_removed_and_counted():
    pieces, report = clean("bell\x07 esc\x1b[0m nul\x00 del\x7f c1\x85 bom\ufeff keep\ttab\nnewline")
    assert pieces == ["bell esc[0m nul del c1 bom keep\ttab\nnewline"]
    assert report.counts["control_chars_removed"] == 6
    assert report.examples == ["control_chars_removed: corpus.txt: byte 7"]


def test_control_characters_removed_from_ascii_text():
    pieces, report = clean("a\x00b\x1fc\x7fd\te\nf\x0b")
    assert pieces == ["abcd\te\nf"]
    assert report.counts["control_chars_removed"] == 4


def test_lone_surrogates_removed():
    # json.loads('"\\ud800"') yields a lone surrogate, which no tokenizer can encode.
    pieces, report = clean("before\ud800after")
    assert pieces == ["beforeafter"]
    assert report.counts["control_chars_removed"] == 1


def test_line_ends_normalised():
    assert clean("one\r\ntwo\rthree")[0] == ["one\ntwo\nthree"]


def test_unicode_normalisation_counted():
    decomposed = "cafe\u0301 and \ufb01le"  # e + combining acute; the 'fi' ligature
    pieces, report = clean(decomposed)
    assert pieces == ["caf\u00e9 and \ufb01le"]  # NFC composes, keeps the ligature
    assert report.counts["unicode_normalized"] == 1
    assert clean(decomposed, normalization="NFKC")[0] == ["caf\u00e9 and file"]
    assert clean(decomposed, normalization=None)[0] == [decomposed]


def test_empty_and_short_documents_dropped_and_counted():
    pieces, report = clean(" \n\t\x00 ")
    assert pieces == []
    assert report.counts["empty_documents"] == 1
    pieces, report = clean("  tiny ", min_doc_chars=5)
    assert pieces == []
    assert report.counts["short_documents"] == 1


def test_overlong_document_split_at_paragraphs():
    paragraphs = [f"Paragraph {i}. " + "word " * 30 for i in range(10)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    pieces, report = clean(text, max_doc_chars=400)
    assert all(len(p) <= 400 for p in pieces)
    assert all(p.startswith("Paragraph") for p in pieces)  # every cut fell on a paragraph break
    assert " ".join(pieces).split() == text.split()  # nothing lost, nothing invented
    assert report.counts["overlong_documents_split"] == 1
    assert report.counts["overlong_pieces"] == len(pieces) > 1


def test_split_prefers_sentences_then_whitespace_then_hard_cut():
    sentences = "This is one sentence. " * 20
    pieces = split_text(sentences.strip(), 100)
    assert all(len(p) <= 100 and p.endswith(".") for p in pieces)
    words = " ".join(["abcdefghij"] * 30)
    assert all(len(p) <= 55 and not p.endswith("abcde") for p in split_text(words, 55))
    unbroken = "x" * 250
    assert split_text(unbroken, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_report_merge_sums_counts_and_caps_examples():
    first, second = BuildReport(), BuildReport()
    for i in range(4):
        first.add("empty_documents", example=f"a.txt: record {i}")
        second.add("empty_documents", example=f"b.txt: record {i}")
    second.add("invalid_utf8_replaced", 10)
    first.merge(second)
    assert first.counts == {"empty_documents": 8, "invalid_utf8_replaced": 10}
    assert len(first.examples) == 5
    assert BuildReport.from_dict(first.to_dict()) == first


@pytest.mark.parametrize(
    "config", [{"normalization": "NFX"}, {"min_doc_chars": 0}, {"max_doc_chars": 10, "min_doc_chars": 20}]
)
def test_bad_config_rejected(config):
    with pytest.raises(ValueError):
        CleanConfig(**config)
