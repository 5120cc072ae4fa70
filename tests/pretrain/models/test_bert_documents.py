"""model.document_isolation for BERT (and RoBERTa, which subclasses it): a packed document's hidden
states are those of the document alone, the run identity records the option, and the weights still
export as a plain BertForMaskedLM."""

import numpy as np
import pytest
import torch
from transformers import BertForMaskedLM

from pretrain.checkpoint.identity import check_resume_identity
from pretrain.checkpoint.record import CheckpointError
from pretrain.config import ConfigError, MaskingConfig
from pretrain.data.documents import document_inputs
from pretrain.data.masking import MaskingCollator
from pretrain.models.bert.config import BertModelConfig
from pretrain.models.bert.model import build_model
from pretrain.models.roberta.config import RobertaModelConfig
from pretrain.models.roberta.model import build_model as build_roberta
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, make_rows

CLS, SEP, PAD = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"], SPECIAL_IDS["pad"]


def isolating_bert(attn: str = "sdpa", isolation: bool = True, arch: str = "bert"):
    """The tiny BERT (or RoBERTa) in fp32 without dropout, with model.document_isolation."""
    torch.manual_seed(0)
    config_class, build = (
        (BertModelConfig, build_model) if arch == "bert" else (RobertaModelConfig, build_roberta)
    )
    cfg = config_class(
        preset="tiny",
        dropout=0.0,
        attention_dropout=0.0,
        attn_implementation=attn,
        document_isolation=isolation,
    )
    return build(cfg, vocab_size=VOCAB_SIZE, pad_id=PAD, rows_have_pairs=False).eval()


def _inputs(doc_start: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    layout = document_inputs(doc_start, lengths)
    return {key: torch.from_numpy(layout[key]) for key in ("document_ids", "position_ids")}


@pytest.mark.parametrize(("attn", "arch"), [("sdpa", "bert"), ("eager", "bert"), ("sdpa", "roberta")])
def test_a_packed_document_sees_only_itself(attn, arch):
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(5, VOCAB_SIZE, n) for n in (6, 9, 4))
    b_doc = np.array([*b, SEP])
    packed = np.array([CLS, *a, SEP, *b_doc, *c, SEP, PAD, PAD])  # [CLS] A [SEP] | B [SEP] | C [SEP] pad
    alone = np.full(len(packed), PAD)
    alone[: len(b_doc)] = b_doc  # row 2: B alone, then padding
    ids = torch.from_numpy(np.stack([packed, alone]))
    doc_start = np.zeros(ids.shape, np.uint8)
    b_at, c_at = 1 + len(a) + 1, 1 + len(a) + 1 + len(b_doc)
    doc_start[0, [0, b_at, c_at]] = 1
    doc_start[1, 0] = 1
    lengths = np.array([c_at + len(c) + 1, len(b_doc)])
    model = isolating_bert(attn, arch=arch)
    with torch.no_grad():
        hidden = model.encode(ids, token_type_ids=torch.zeros_like(ids), **_inputs(doc_start, lengths))
        hidden = hidden.last_hidden_state
        # B run alone through the plain encoder: one unpadded document at positions 0..
        single = torch.from_numpy(b_doc)[None]
        reference = model.bert(input_ids=single, token_type_ids=torch.zeros_like(single)).last_hidden_state[0]
        across = model.encode(ids[:1], token_type_ids=torch.zeros_like(ids[:1])).last_hidden_state
    torch.testing.assert_close(hidden[0, b_at:c_at], reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden[1, : len(b_doc)], reference, rtol=0, atol=1e-5)
    assert not torch.allclose(across[0, b_at:c_at], reference, atol=1e-3)  # without isolation B sees A, C


def test_the_collated_batch_trains_and_the_shape_records_the_option():
    model = isolating_bert()
    assert "document_ids" in model.batch_keys and "position_ids" in model.batch_keys
    assert "attention_mask" not in model.batch_keys  # the document mask holds the padding too
    collator = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=1, batch_keys=model.batch_keys
    )
    batch = collator.collate(make_rows(4, 24, seed=2, documents=True), np.arange(4), 0)
    assert set(batch) == set(model.batch_keys)
    model.train()
    out = model(**batch)
    out.mlm_loss_sum.backward()
    assert torch.isfinite(out.mlm_loss_sum) and model.bert.embeddings.position_embeddings.weight.grad.any()
    plain = isolating_bert(isolation=False)
    assert model.shape() == {**plain.shape(), "document_isolation": True}
    assert "document_isolation" not in plain.shape()  # runs from before the option keep their identity


def test_a_resume_that_flips_isolation_is_refused():
    saved = {f"model.{k}": v for k, v in isolating_bert(isolation=False).shape().items()}
    current = {f"model.{k}": v for k, v in isolating_bert().shape().items()}
    with pytest.raises(CheckpointError, match=r"model.document_isolation None -> True.*resume_allow_changed"):
        check_resume_identity("ckpt", saved, current, ())
    with pytest.raises(CheckpointError, match=r"model.document_isolation True -> None"):
        check_resume_identity("ckpt", current, saved, ())


def test_the_weights_export_as_bert_for_masked_lm_equal_on_one_document():
    model = isolating_bert()
    reference = BertForMaskedLM(model.hf_config).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    ids = torch.from_numpy(np.random.default_rng(1).integers(5, VOCAB_SIZE, (1, 12)))
    one_document = _inputs(np.eye(1, 12, dtype=np.uint8), np.array([12]))
    with torch.no_grad():
        ours = model.encode(ids, token_type_ids=torch.zeros_like(ids), **one_document).last_hidden_state
        theirs = reference.bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_isolation_on_sentence_pairs_is_refused():
    cfg = BertModelConfig(preset="tiny", document_isolation=True)
    with pytest.raises(ConfigError, match="NSP/SOP sentence pairs.*model.document_isolation=false"):
        build_model(cfg, vocab_size=VOCAB_SIZE, pad_id=PAD, rows_have_pairs=True)
