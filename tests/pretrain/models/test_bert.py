"""The sparse-head model against the Hugging Face BERT classes on the same weights and batch."""

import numpy as np
import pytest
import torch
from transformers import BertForMaskedLM, BertForPreTraining

from pretrain.config import ConfigError, MaskingConfig
from pretrain.data.masking import MaskingCollator
from pretrain.models.bert.config import BertModelConfig
from pretrain.models.bert.model import build_model
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, make_rows

TINY = BertModelConfig(preset="tiny", dropout=0.0, attention_dropout=0.0)


def bert(pairs: bool = False):
    """The tiny BERT without dropout, with an NSP/SOP head when `pairs`."""
    return build_model(TINY, vocab_size=VOCAB_SIZE, pad_id=0, rows_have_pairs=pairs)


def batch(pairs: bool):
    collator = MaskingCollator(MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=1)
    rows = make_rows(6, 24, pairs=pairs, seed=2)
    return collator.collate(rows, np.arange(6), 0)


def dense_labels(b):
    labels = torch.full((b["input_ids"].numel(),), -100, dtype=torch.int64)
    labels[b["masked_positions"]] = b["masked_labels"]
    return labels.view_as(b["input_ids"])


def with_bert_for_masked_lm(model, b):
    """(BertForMaskedLM holding `model`'s weights, our output on batch `b`, its output on `b`)."""
    reference = BertForMaskedLM(model.hf_config).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    out = model(
        b["input_ids"], b["attention_mask"], b["token_type_ids"], b["masked_positions"], b["masked_labels"]
    )
    ref = reference(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        token_type_ids=b["token_type_ids"],
        labels=dense_labels(b),
    )
    return reference, out, ref


def test_sparse_mlm_loss_equals_bert_for_masked_lm():
    torch.manual_seed(0)
    model = bert().eval()
    assert model.export_class_name == "BertForMaskedLM"
    b = batch(pairs=False)
    reference, out, ref = with_bert_for_masked_lm(model, b)
    assert int(out.num_masked) == len(b["masked_labels"]) > 0
    torch.testing.assert_close(out.mlm_loss_sum / out.num_masked, ref.loss, rtol=1e-6, atol=1e-6)
    dense_pred = ref.logits.view(-1, VOCAB_SIZE)[b["masked_positions"]].argmax(-1)
    assert int(out.mlm_correct) == int((dense_pred == b["masked_labels"]).sum())
    assert int(out.num_pairs) == 0 and float(out.pair_loss_sum) == 0.0


def test_pair_head_losses_equal_bert_for_pretraining_and_gradients_flow():
    torch.manual_seed(0)
    model = bert(pairs=True).eval()
    assert model.export_class_name == "BertForPreTraining"
    reference = BertForPreTraining(model.hf_config).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    b = batch(pairs=True)
    out = model(
        b["input_ids"],
        b["attention_mask"],
        b["token_type_ids"],
        b["masked_positions"],
        b["masked_labels"],
        b["pair_labels"],
    )
    ref = reference(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        token_type_ids=b["token_type_ids"],
        labels=dense_labels(b),
        next_sentence_label=b["pair_labels"],
    )
    ours = out.mlm_loss_sum / out.num_masked + out.pair_loss_sum / out.num_pairs
    torch.testing.assert_close(ours, ref.loss, rtol=1e-6, atol=1e-6)
    ours.backward()
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is embeddings  # tied, as in BERT
    assert embeddings.grad is not None and model.cls.seq_relationship.weight.grad is not None


def test_init_from_hf_checkpoint_loads_its_weights(tmp_path):
    torch.manual_seed(3)
    source = BertForMaskedLM(bert().hf_config)
    source.save_pretrained(tmp_path / "ckpt")
    model = build_model(
        BertModelConfig(init_from=str(tmp_path / "ckpt")),
        vocab_size=VOCAB_SIZE,
        pad_id=0,
        rows_have_pairs=True,
    )
    ours = model.state_dict()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)
    assert model.config.num_hidden_layers == 2 and model.has_pair_head


def test_init_from_with_another_vocabulary_names_both_sizes(tmp_path):
    source = BertForMaskedLM(bert().hf_config)
    source.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match=r"vocab_size 500 but /data/shards/tokenizer has 800"):
        build_model(
            BertModelConfig(init_from=str(tmp_path / "ckpt")),
            vocab_size=800,
            pad_id=0,
            rows_have_pairs=False,
            tokenizer_source="/data/shards/tokenizer",
        )
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(BertModelConfig(init_from=str(tmp_path)), vocab_size=800, pad_id=0, rows_have_pairs=False)


def test_flops_per_token_counts_encoder_attention_and_sparse_head():
    model = build_model(BertModelConfig(preset="mini"), vocab_size=30000, pad_id=0, rows_have_pairs=False)
    h, layers, seq = 256, 4, 128
    per_layer = 4 * h * h + 4 * h + 2 * h * 1024 + 1024 + h + 4 * h  # attention, FFN, 2 LayerNorms
    head = h * h + 3 * h + h * 30000
    expected = 6 * layers * per_layer + 12 * layers * h * seq + 0.15 * 6 * head
    assert model.flops_per_token(seq) == pytest.approx(expected)
    assert 10e6 < model.count_parameters() < 13e6  # BERT-Mini's ~11M


def test_batch_without_masked_tokens_gives_zero_sums():
    model = bert()
    b = batch(pairs=False)
    none = torch.zeros(0, dtype=torch.int64)
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], none, none)
    assert out.mlm_loss_sum.item() == 0.0 and int(out.num_masked) == 0 and int(out.mlm_correct) == 0
    assert model.hf_config.architectures == ["BertForMaskedLM"]


def test_attention_runs_through_torch_sdpa_in_every_layer(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model = build_model(
        BertModelConfig(preset="tiny"), vocab_size=VOCAB_SIZE, pad_id=0, rows_have_pairs=False
    )
    assert model.config._attn_implementation == "sdpa"
    b = batch(pairs=False)
    model(b["input_ids"], b["attention_mask"], b["token_type_ids"], b["masked_positions"], b["masked_labels"])
    assert len(calls) == model.config.num_hidden_layers  # (batch, heads, seq, head_dim) per layer
    assert all(shape[:2] == (6, model.config.num_attention_heads) for shape in calls)


def test_the_deterministic_switch_sets_torch_cublas_and_attention_and_the_model_trains(monkeypatch):
    import os

    from pretrain.runtime.distributed import set_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.backends.cudnn.deterministic
        assert not torch.backends.cuda.cudnn_sdp_enabled()  # not covered by torch's deterministic mode
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        grads = []
        for _ in range(2):  # every op of a training step has a deterministic kernel (none raises)
            torch.manual_seed(0)
            model = build_model(
                BertModelConfig(preset="tiny"), vocab_size=VOCAB_SIZE, pad_id=0, rows_have_pairs=False
            )
            b = batch(pairs=False)
            out = model(
                b["input_ids"],
                b["attention_mask"],
                b["token_type_ids"],
                b["masked_positions"],
                b["masked_labels"],
            )
            out.mlm_loss_sum.backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cuda.enable_cudnn_sdp(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.mark.parametrize("pairs", [False, True])
def test_an_unpadded_batch_gives_bit_identical_losses_and_gradients_without_the_mask(pairs):
    """The collator leaves attention_mask out of an unpadded batch (no host check of it in transformers'
    mask path); that must change no bit of the losses or the gradients on CPU."""
    rows = make_rows(6, 24, pairs=pairs, seed=2)
    shortest = int(rows["length"].min())
    collator = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=1, seq_len=shortest
    )
    b = collator.collate(rows, np.arange(6), 0)
    assert "attention_mask" not in b
    torch.manual_seed(0)
    model = build_model(
        BertModelConfig(preset="tiny"), vocab_size=VOCAB_SIZE, pad_id=0, rows_have_pairs=pairs
    ).train()
    results = []
    for mask in (None, torch.ones_like(b["input_ids"])):
        torch.manual_seed(5)  # the same dropout masks in both passes
        model.zero_grad(set_to_none=True)
        out = model(**b, attention_mask=mask)
        (out.mlm_loss_sum + out.pair_loss_sum).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((out, grads))
    (without, g_without), (with_mask, g_with) = results
    for field in ("mlm_loss_sum", "mlm_correct", "num_masked", "pair_loss_sum", "pair_correct", "num_pairs"):
        assert torch.equal(getattr(without, field), getattr(with_mask, field)), field
    assert without.num_masked.dtype == torch.int64 and int(without.num_masked) == b["masked_labels"].numel()
    assert all(torch.equal(a, c) for a, c in zip(g_without, g_with, strict=True))


def test_a_padded_vocabulary_keeps_the_loss_of_the_real_ids_and_exports_as_bert(tmp_path):
    # 500 ids padded to 512 rows: the HF class loads the weights strictly and gives the same loss; a
    # continued run takes the padded export as its init_from.
    cfg = BertModelConfig(preset="tiny", dropout=0.0, attention_dropout=0.0, pad_vocab_to_multiple_of=64)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB_SIZE, pad_id=0, rows_have_pairs=False).eval()
    assert model.hf_config.vocab_size == 512 and model.shape()["vocab_size"] == 512
    b = batch(pairs=False)
    reference, out, ref = with_bert_for_masked_lm(model, b)
    torch.testing.assert_close(out.mlm_loss_sum / out.num_masked, ref.loss, rtol=1e-6, atol=1e-6)
    reference.save_pretrained(tmp_path / "export")
    again = build_model(
        BertModelConfig(init_from=str(tmp_path / "export"), pad_vocab_to_multiple_of=64),
        vocab_size=VOCAB_SIZE,
        pad_id=0,
        rows_have_pairs=False,
    )
    assert again.hf_config.vocab_size == 512
    with pytest.raises(ConfigError, match=r"has 800 \(padded to 832"):
        build_model(
            BertModelConfig(init_from=str(tmp_path / "export"), pad_vocab_to_multiple_of=64),
            vocab_size=800,
            pad_id=0,
            rows_have_pairs=False,
        )
    with pytest.raises(ConfigError, match="pad_vocab_to_multiple_of must be >= 1"):
        BertModelConfig(preset="tiny", pad_vocab_to_multiple_of=0)
