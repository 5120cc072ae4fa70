"""ModernBERT (pretrain/models/modernbert/) against transformers' ModernBertForMaskedLM on the same weights,
and document isolation: in a row packing documents A|B|C, B's hidden states are those of B run alone, in
global and local layers, at a local-window edge, for the padded (SDPA, FlexAttention) and the unpadded
layout. Batches come from pretrain/data/documents.py's `document_inputs` on the CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import ModernBertForMaskedLM

from pretrain.config import ConfigError, config_from_dict
from pretrain.data.documents import document_inputs
from pretrain.models.attention import BACKENDS, AttentionBackend
from pretrain.models.document_mask import document_attention_mask
from pretrain.models.modernbert.config import ModernBertModelConfig
from pretrain.models.modernbert.model import build_model

VOCAB = 300
# 8-token local window (4 each side): documents of 13 tokens have tokens inside and outside it.
TINY = ModernBertModelConfig(preset="tiny", local_attention=8, compile=False)


def modernbert(cfg: ModernBertModelConfig = TINY, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, vocab_size=VOCAB, pad_id=0, rows_have_pairs=False).eval()


def layout(doc_start: np.ndarray, lengths) -> dict[str, torch.Tensor]:
    """The document keys of rows, as the collator hands them to the model (CPU tensors)."""
    return {k: torch.from_numpy(v) for k, v in document_inputs(doc_start, np.asarray(lengths)).items()}


def reference_varlen(q, k, v, *, mask=None, cu_seqlens, max_seqlen, window=None):
    """The unpadded kernels' contract (packed tokens + cu_seqlens) computed by SDPA, so the unpadded
    layout of the model (gather, positions, masked rows) runs on a CPU; the GPU kernels are checked
    against the masked-SDPA reference where a GPU is lent."""
    tokens = q.shape[0]
    document = torch.searchsorted(cu_seqlens[1:].long(), torch.arange(tokens), right=True) + 1
    allowed = document_attention_mask(document[None], window)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=allowed
    )
    return out[0].transpose(0, 1)


UNPADDED_REFERENCE = AttentionBackend("unpadded-reference", unpadded=True, attend=reference_varlen)


def with_backend(model, name: str):
    model.use_backend(UNPADDED_REFERENCE if name == "unpadded-reference" else BACKENDS[name])
    return model


def padded_hidden(model, ids, keys) -> torch.Tensor:
    """(batch, seq, hidden) final hidden states whatever the backend's layout (padding left at 0)."""
    hidden = model.encode(ids, **keys)
    if not model.backend.unpadded:
        return hidden.view(*ids.shape, -1)
    full = torch.zeros(ids.numel(), hidden.shape[-1])
    full[keys["unpad_indices"]] = hidden
    return full.view(*ids.shape, -1)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_weights_load_strictly_into_transformers_and_logits_match_on_padded_documents(bias):
    model = modernbert(dataclasses.replace(TINY, bias=bias))
    if bias:  # zero-initialised: give the biases values the comparison can see
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
    assert any(name.endswith("attn.Wqkv.bias") for name in model.state_dict()) == bias
    reference = ModernBertForMaskedLM(model.hf_config).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    assert model.hf_config.layer_types == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]
    ids = torch.randint(5, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    lengths = np.array([24, 15])  # longer than the window, and a padded row
    ids[1, 15:] = 0
    keys = layout(np.zeros(ids.shape), lengths)
    attention_mask = torch.from_numpy((np.arange(24)[None] < lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=attention_mask).logits
        for backend in ("sdpa", "unpadded-reference"):
            got = model.logits(padded_hidden(with_backend(model, backend), ids, keys))
            torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[1, :15], expected[1, :15], rtol=1e-5, atol=1e-5)


def packed_and_alone(seed: int = 3):
    """A row packing A (5 tokens) | B (13) | C (6) then padding, and B alone in a row of its own."""
    g = torch.Generator().manual_seed(seed)
    seq, a, b, c = 28, 5, 13, 6
    row = torch.randint(5, VOCAB, (1, seq), generator=g)
    row[0, a + b + c :] = 0
    starts = np.zeros((1, seq))
    starts[0, [0, a, a + b]] = 1
    alone = torch.zeros((1, seq), dtype=torch.int64)
    alone[0, :b] = row[0, a : a + b]
    return row, layout(starts, [a + b + c]), alone, layout(np.zeros((1, seq)), [b]), slice(a, a + b), b


GLOBAL_ONLY = dataclasses.replace(TINY, global_attn_every_n_layers=1)
# Layer 0 is always global; with n larger than the depth every other layer is local.
LOCAL_AFTER_FIRST = dataclasses.replace(TINY, global_attn_every_n_layers=100)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("cfg", [GLOBAL_ONLY, LOCAL_AFTER_FIRST, TINY], ids=["global", "local", "mixed"])
@pytest.mark.parametrize("backend", ["sdpa", "unpadded-reference", "flex"])
def test_a_packed_document_sees_only_itself(cfg, backend):
    model = with_backend(modernbert(cfg), backend)
    row, row_keys, alone, alone_keys, where, b = packed_and_alone()
    with torch.no_grad():
        packed = padded_hidden(model, row, row_keys)[0, where]
        single = padded_hidden(model, alone, alone_keys)[0, :b]
        torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-5)
        # The same row as one document (no isolation, positions not restarted) does change B: the
        # comparison above can fail.
        leaky = layout(np.zeros(row.shape), [row_keys["unpad_indices"].numel()])
        assert (padded_hidden(model, row, leaky)[0, where] - single).abs().max() > 1e-3


def test_a_local_layer_sees_exactly_its_window():
    # One global layer 0 with no effect on token j's view, then a local layer: perturbing a token just
    # outside the window of token 0 leaves token 0's output alone, one just inside changes it.
    model = with_backend(modernbert(dataclasses.replace(LOCAL_AFTER_FIRST, num_layers=2)), "sdpa")
    layer = model.model.layers[1]
    x = torch.randn(1, 16, 128)
    keys = layout(np.zeros((1, 16)), [16])
    cos, sin = _rotary(model, keys)
    mask = model.backend.prepare(keys["document_ids"], 8)
    with torch.no_grad():
        base = layer.attn(x, cos, sin, mask, None, 16)
        for j, changes in ((4, True), (5, False)):
            bumped = x.clone()
            bumped[0, j] += 1.0
            moved = (layer.attn(bumped, cos, sin, mask, None, 16)[0, 0] - base[0, 0]).abs().max()
            assert (moved > 1e-4) == changes, (j, moved)


def _rotary(model, keys):
    from pretrain.models.modernbert.layers import rotary_cos_sin

    return rotary_cos_sin(keys["position_ids"], model.head_dim, model.thetas["sliding_attention"])


@pytest.mark.parametrize("backend", ["sdpa", "unpadded-reference"])
def test_forward_sums_and_counts_and_backward_runs_on_cpu(backend):
    model = with_backend(modernbert(), backend).train()
    row, keys, *_ = packed_and_alone()
    masked = torch.tensor([1, 6, 7, 20])
    out = model(row, masked, row.view(-1)[masked], **keys)
    assert out.num_masked.item() == 4 and out.num_pairs.item() == 0
    # At initialisation the loss is close to uniform over the vocabulary.
    assert abs(out.mlm_loss_sum.item() / 4 - np.log(VOCAB)) < 1.0
    out.mlm_loss_sum.backward()
    grad = model.model.embeddings.tok_embeddings.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_backends_agree_on_the_loss_of_a_packed_batch():
    row, keys, *_ = packed_and_alone()
    masked = torch.tensor([0, 6, 13, 22])
    losses = []
    with torch.no_grad():
        for backend in ("sdpa", "unpadded-reference", "flex"):
            model = with_backend(modernbert(), backend)
            losses.append(model(row, masked, row.view(-1)[masked], **keys).mlm_loss_sum)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses[2], losses[0], rtol=1e-5, atol=1e-5)


def test_a_forward_without_document_keys_names_them():
    model = modernbert()
    ids = torch.randint(5, VOCAB, (1, 8))
    with pytest.raises(TypeError, match="needs document_ids, position_ids, cu_seqlens, unpad_indices"):
        model(ids, torch.tensor([1]), ids[0, 1:2])


def test_sentence_pair_rows_are_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"no NSP/SOP head, but the rows of /data/x hold sentence pairs.*--mode"
    ):
        build_model(
            TINY,
            vocab_size=VOCAB,
            pad_id=0,
            rows_have_pairs=True,
            tokenizer_source="the tokenizer of /data/x",
        )


def test_the_config_section_fills_presets_and_refuses_bad_shapes():
    cfg = config_from_dict(
        {"run_dir": "r", "data": {"path": "d"}, "model": {"arch": "modernbert", "preset": "base"}}
    )
    assert (
        cfg.model.num_layers,
        cfg.model.hidden_size,
        cfg.model.intermediate_size,
        cfg.model.num_heads,
    ) == (22, 768, 1152, 12)
    assert cfg.model.layer_types()[:4] == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]
    with pytest.raises(ConfigError, match="local_attention must be even"):
        ModernBertModelConfig(preset="tiny", local_attention=7)
    with pytest.raises(ConfigError, match="even head width"):
        ModernBertModelConfig(preset="tiny", hidden_size=130, num_heads=2 * 65)
    with pytest.raises(ConfigError, match="model.num_layers, model.hidden_size"):
        ModernBertModelConfig(num_heads=2, intermediate_size=8)


def test_base_size_and_flops():
    with torch.device("meta"):
        model = build_model(
            ModernBertModelConfig(preset="base", compile=False),
            vocab_size=50368,
            pad_id=0,
            rows_have_pairs=False,
        )
    # ModernBERT-base has 149M parameters (the paper's count, embeddings included).
    assert 148e6 < model.count_parameters() < 151e6
    flops = model.flops_per_token(1024, 0.3)
    assert (
        6 * (model.count_parameters() - 50368 * 768)
        < flops
        < 6 * model.count_parameters() + 12 * 22 * 768 * 1024
    )


def test_yaml_on_and_off_set_compile(tmp_path):
    from pretrain.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\ndata: {path: d}\nmodel: {arch: modernbert, preset: tiny, compile: off}\n")
    assert load_config(str(path)).model.compile is False
    assert load_config(str(path), ["model.compile=on"]).model.compile is True
    assert load_config(str(path), ["model.compile=auto"]).model.compile == "auto"
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(str(path), ["model.compile=sometimes"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU kernels' numerics need a GPU")
@pytest.mark.parametrize("backend", ["varlen", "flash", "flex"])
def test_gpu_backends_match_the_reference_on_packed_rows(backend):
    from pretrain.models.attention_select import device_facts, installed_kernels, select_backend

    model = modernbert().cuda().to(torch.bfloat16)
    weight = model.model.embeddings.tok_embeddings.weight
    try:
        select_backend(backend, device_facts(weight.device), weight.dtype, installed_kernels())
    except ConfigError as e:
        pytest.skip(str(e))
    row, keys, alone, alone_keys, where, b = packed_and_alone()
    row, alone = row.cuda(), alone.cuda()
    keys = {k: v.cuda() for k, v in keys.items()}
    alone_keys = {k: v.cuda() for k, v in alone_keys.items()}
    with torch.no_grad():
        reference = padded_hidden_on(with_backend(model, "sdpa"), row, keys)
        got = padded_hidden_on(with_backend(model, backend), row, keys)
        single = padded_hidden_on(model, alone, alone_keys)[0, :b]
    used = keys["unpad_indices"].numel()
    torch.testing.assert_close(
        got.view(-1, got.shape[-1])[:used], reference.view(-1, got.shape[-1])[:used], rtol=2e-2, atol=2e-2
    )
    torch.testing.assert_close(got[0, where], single, rtol=2e-2, atol=2e-2)


def padded_hidden_on(model, ids, keys) -> torch.Tensor:
    """padded_hidden on the model's device and dtype."""
    hidden = model.encode(ids, **keys)
    if not model.backend.unpadded:
        return hidden.view(*ids.shape, -1)
    full = torch.zeros(ids.numel(), hidden.shape[-1], device=hidden.device, dtype=hidden.dtype)
    full[keys["unpad_indices"]] = hidden
    return full.view(*ids.shape, -1)
