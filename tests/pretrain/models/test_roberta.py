"""The RoBERTa model against transformers' RobertaForMaskedLM on the same weights and batch."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

from pretrain.config import ConfigError, MaskingConfig, config_from_dict
from pretrain.data.documents import document_inputs
from pretrain.data.masking import MaskingCollator
from pretrain.models.bert.model import MLMPretrainingModel
from pretrain.models.roberta.config import RobertaModelConfig
from pretrain.models.roberta.model import build_model
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, make_rows

TINY = RobertaModelConfig(preset="tiny", dropout=0.0, attention_dropout=0.0, max_position_embeddings=32)
# RoBERTa's special ids (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4) and the map from the helper rows' ones.
ROBERTA_IDS = {"cls": 0, "pad": 1, "sep": 2, "unk": 3, "mask": 4}
TO_ROBERTA = np.arange(VOCAB_SIZE)
TO_ROBERTA[[SPECIAL_IDS[role] for role in ROBERTA_IDS]] = list(ROBERTA_IDS.values())


def roberta(**options):
    torch.manual_seed(0)
    return build_model(TINY, vocab_size=VOCAB_SIZE, pad_id=1, rows_have_pairs=False, **options).eval()


def batch():
    """A masked batch of padded single-document rows in RoBERTa's ids (rows of 24 tokens)."""
    rows = make_rows(6, 24, seed=2)
    rows["input_ids"] = TO_ROBERTA[rows["input_ids"]].astype(np.uint16)
    rows["input_ids"][np.arange(24)[None, :] >= rows["length"][:, None]] = ROBERTA_IDS["pad"]
    collator = MaskingCollator(MaskingConfig(), special_ids=ROBERTA_IDS, vocab_size=VOCAB_SIZE, seed=1)
    out = collator.collate(rows, np.arange(6), 0)
    assert bool((out["attention_mask"] == 0).any())  # padded rows
    return out, rows


def test_weights_load_strictly_into_roberta_for_masked_lm_and_the_losses_agree():
    model = roberta()
    assert model.export_class_name == "RobertaForMaskedLM" and model.hf_config.architectures == [
        "RobertaForMaskedLM"
    ]
    config = model.hf_config
    assert (config.max_position_embeddings, config.type_vocab_size, config.pad_token_id) == (34, 1, 1)
    assert model.max_positions == 32 and model.shape()["max_position_embeddings"] == 32
    assert "token_type_ids" not in model.batch_keys and "pair_labels" not in model.batch_keys
    reference = RobertaForMaskedLM(RobertaConfig.from_dict(config.to_dict())).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    b, _ = batch()
    out = model(**{key: b[key] for key in model.batch_keys})
    labels = torch.full((b["input_ids"].numel(),), -100, dtype=torch.int64)
    labels[b["masked_positions"]] = b["masked_labels"]
    ref = reference(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels.view(6, 24))
    torch.testing.assert_close(out.mlm_loss_sum / out.num_masked, ref.loss, rtol=1e-6, atol=1e-6)
    dense_pred = ref.logits.view(-1, VOCAB_SIZE)[b["masked_positions"]].argmax(-1)
    assert int(out.mlm_correct) == int((dense_pred == b["masked_labels"]).sum()) and int(out.num_pairs) == 0
    (out.mlm_loss_sum / out.num_masked).backward()
    embeddings = model.roberta.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.weight is embeddings and embeddings.grad is not None  # tied, as in RoBERTa


def test_document_positions_move_to_robertas_numbering():
    """Positions that start at 0 per document (the document keys) give what RoBERTa numbers itself."""
    model = roberta()
    b, rows = batch()
    doc_start = np.zeros_like(rows["word_start"])
    doc_start[:, 0] = 1  # one document per row
    positions = torch.from_numpy(document_inputs(doc_start, rows["length"])["position_ids"])
    keys = {key: b[key] for key in model.batch_keys}
    with torch.no_grad():
        plain, given = model(**keys), model(**keys, position_ids=positions)
    torch.testing.assert_close(given.mlm_loss_sum, plain.mlm_loss_sum, rtol=0, atol=1e-6)
    with torch.no_grad():
        shifted = model.encode(keys["input_ids"], position_ids=positions).last_hidden_state
        unshifted = MLMPretrainingModel.encode(model, keys["input_ids"], position_ids=positions)
    assert not torch.allclose(shifted, unshifted.last_hidden_state, atol=1e-3)  # the shift matters


def test_pair_shards_and_a_high_pad_id_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"no NSP/SOP head .* --mode full-sentences"):
        build_model(TINY, vocab_size=VOCAB_SIZE, pad_id=1, rows_have_pairs=True, tokenizer_source="/s/tok")
    with pytest.raises(ConfigError, match=r"pad id 400: .*mlm-data tokenizer --kind bpe"):
        build_model(TINY, vocab_size=VOCAB_SIZE, pad_id=400, rows_have_pairs=False)
    with pytest.raises(ConfigError, match=r"pair_head: expected one of 'none', got 'auto'"):
        config_from_dict(
            {"run_dir": "r", "data": {"path": "s"}, "model": {"arch": "roberta", "pair_head": "auto"}}
        )


def test_init_from_a_roberta_checkpoint_loads_its_weights_and_checks_the_tokenizer(tmp_path):
    torch.manual_seed(3)
    source = RobertaForMaskedLM(roberta().hf_config)
    source.save_pretrained(tmp_path / "ckpt")
    cfg = RobertaModelConfig(init_from=str(tmp_path / "ckpt"))
    model = build_model(cfg, vocab_size=VOCAB_SIZE, pad_id=1, rows_have_pairs=False)
    ours = model.state_dict()
    assert set(ours) == set(source.state_dict())
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)
    assert model.max_positions == 32
    with pytest.raises(ConfigError, match=r"vocab_size 500 and pad id 1 but /s/tok has 800 and 0"):
        build_model(cfg, vocab_size=800, pad_id=0, rows_have_pairs=False, tokenizer_source="/s/tok")
    bert = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertForMaskedLM(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="no config.json there; expected a Hugging Face RoBERTa"):
        build_model(
            RobertaModelConfig(init_from=str(tmp_path)),
            vocab_size=VOCAB_SIZE,
            pad_id=1,
            rows_have_pairs=False,
        )
    with pytest.raises(ConfigError, match="model_type is 'bert', expected 'roberta'"):
        build_model(
            RobertaModelConfig(init_from=str(tmp_path / "bert")),
            vocab_size=VOCAB_SIZE,
            pad_id=1,
            rows_have_pairs=False,
        )


def test_flops_per_token_counts_what_berts_counts():
    model = build_model(RobertaModelConfig(preset="mini"), vocab_size=30000, pad_id=1, rows_have_pairs=False)
    h, layers, seq = 256, 4, 128
    per_layer = 4 * h * h + 4 * h + 2 * h * 1024 + 1024 + h + 4 * h  # attention, FFN, 2 LayerNorms
    head = h * h + h + h * 30000  # dense and the vocabulary projection
    expected = 6 * layers * per_layer + 12 * layers * h * seq + 0.15 * 6 * head
    assert model.flops_per_token(seq) == pytest.approx(expected)
