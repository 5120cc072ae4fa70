"""mlm-finetune --task token-classification end to end on CPU, on a slice of the offline token task: a tiny
BERT (WordPiece) saved with save_pretrained from JSONL in BIO, and a tiny RoBERTa (byte-level BPE) from
CoNLL files in BIOES; the report's per-entity table, windows counted, the random-init baseline."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.finetune.cli import main as finetune_main

COMMON = [
    "--task",
    "token-classification",
    "--epochs",
    "1",
    "--lr",
    "3e-3",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def token_task(tmp_path_factory):
    """(train.jsonl, validation.jsonl, rows): the first sentences of the offline token task."""
    from data_pipeline.samples.token_task import write_token_task

    root = tmp_path_factory.mktemp("token-task")
    write_token_task(str(root / "full"))
    rows = {}
    for split, n in (("train", 240), ("validation", 80)):
        lines = (root / "full" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        rows[split] = [json.loads(line) for line in lines]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "train.jsonl", root / "validation.jsonl", rows


def _corpus(root, rows):
    (root / "corpus").mkdir()
    text = "\n\n".join(" ".join(r["tokens"]) for r in rows["train"])
    (root / "corpus" / "train.txt").write_text(text, encoding="utf-8")
    return root / "corpus"


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, token_task):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from data_pipeline.tokenizer.training import train_tokenizer

    root = tmp_path_factory.mktemp("token-bert")
    train_tokenizer([str(_corpus(root, token_task[2]))], "wordpiece", 600, str(root / "tokenizer"))
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return root / "model"


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_bert_from_jsonl_reports_entities_per_type_against_random_init(
    tmp_path, tiny_bert_dir, token_task, capsys
):
    train, validation, rows = token_task
    out = tmp_path / "out"
    argv = [str(tiny_bert_dir), "--train", str(train), "--validation", str(validation), "--seeds", "2"]
    argv += ["--baseline", "random-init", "--max-seq-len", "32", "--out", str(out), *COMMON]
    assert finetune_main(argv) == 0
    report = _report(out)
    task = report["task"]
    assert task["type"] == "token-classification" and task["scheme"] == "BIO"
    assert task["labels"] == ["O", "B-ARG", "I-ARG", "B-EXC", "I-EXC", "B-MOD", "I-MOD"]
    assert (task["train_sentences"], task["validation_sentences"]) == (240, 80)
    # Sentences longer than 32 sub-tokens were split into windows, not cut: counted in the report.
    assert task["encoding"]["validation"]["split_sentences"] > 0
    assert task["encoding"]["validation"]["windows"] > 80
    words = [t for r in rows["validation"] for t in r["tags"]]
    assert task["all_o_word_accuracy"] == pytest.approx(words.count("O") / len(words))
    support = {kind: sum(t == f"B-{kind}" for t in words) for kind in ("ARG", "EXC", "MOD")}
    for which in ("pretrained", "random_init"):
        r = report[which]
        assert [run["seed"] for run in r["per_seed"]] == [0, 1]
        assert {k: v["support"] for k, v in r["per_type"].items() if v["support"]} == {
            k: n for k, n in support.items() if n
        }
        for name in ("precision", "recall", "f1", "word_accuracy"):
            assert 0.0 <= r[f"{name}_mean"] <= 1.0 and r[f"{name}_std"] >= 0.0
    printed = capsys.readouterr().out
    assert "micro" in printed and "ARG" in printed and "random-init" in printed and "all O" in printed


def _conll_bioes(path, rows):
    """The rows as a CoNLL file in BIOES (every entity here is B (I...) : its last word becomes E-, a
    one-word entity S-)."""
    lines = ["-DOCSTART- O", ""]
    for r in rows:
        tags = list(r["tags"])
        for i, tag in enumerate(tags):
            ends = i + 1 == len(tags) or not tags[i + 1].startswith("I-")
            if ends and tag.startswith("B-"):
                tags[i] = "S-" + tag[2:]
            elif ends and tag.startswith("I-"):
                tags[i] = "E-" + tag[2:]
        lines += [f"{w} {t}" for w, t in zip(r["tokens"], tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_roberta_with_byte_level_bpe_from_conll_in_bioes(tmp_path, token_task):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    _, _, rows = token_task
    bpe = ByteLevelBPETokenizer()
    corpus = _corpus(tmp_path, rows)
    bpe.train(
        [str(corpus / "train.txt")],
        vocab_size=600,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    (tmp_path / "bpe").mkdir()
    bpe.save_model(str(tmp_path / "bpe"))
    tok = RobertaTokenizerFast.from_pretrained(str(tmp_path / "bpe"))  # add_prefix_space False, as saved
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(str(tmp_path / "model"))
    tok.save_pretrained(str(tmp_path / "model"))
    train = _conll_bioes(tmp_path / "train.conll", rows["train"][:120])
    validation = _conll_bioes(tmp_path / "validation.bioes", rows["validation"][:40])
    out = tmp_path / "out"
    argv = [str(tmp_path / "model"), "--train", str(train), "--validation", str(validation), "--seeds", "1"]
    argv += ["--tag-scheme", "BIOES", "--max-seq-len", "32", "--out", str(out), *COMMON]
    assert finetune_main(argv) == 0
    report = _report(out)
    assert report["task"]["scheme"] == "BIOES" and "S-ARG" in report["task"]["labels"]
    assert report["task"]["validation_sentences"] == 40
    assert "random_init" not in report and report["pretrained"]["per_type"]["ARG"]["support"] > 0
