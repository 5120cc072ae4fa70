"""MaskingCollator: statistics, specials and padding untouched, whole words, determinism per sample."""

import numpy as np
import pytest
import torch

from pretrain.config import MaskingConfig
from pretrain.data.masking import MaskingCollator
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, make_rows

ROWS = make_rows(1024, 192, seed=1)  # ~150k real (non-pad) tokens


def collate(rows, cfg=None, seed=3, epoch=0, indices=None):
    collator = MaskingCollator(
        cfg or MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=seed
    )
    n = len(rows["length"])
    return collator.collate(rows, np.arange(n) if indices is None else indices, epoch)


def selected_mask(out, shape):
    mask = np.zeros(shape[0] * shape[1], dtype=bool)
    mask[out["masked_positions"].numpy()] = True
    return mask.reshape(shape)


def maskable(rows):
    ids = rows["input_ids"].astype(np.int64)
    in_seq = np.arange(ids.shape[1])[None, :] < rows["length"][:, None]
    return in_seq & ~np.isin(ids, list(SPECIAL_IDS.values()))


@pytest.mark.parametrize("cfg", [MaskingConfig(), MaskingConfig(whole_word=True), MaskingConfig(span=True)])
def test_rate_split_and_no_specials_on_1e5_tokens(cfg):
    out = collate(ROWS, cfg)
    ids = ROWS["input_ids"].astype(np.int64)
    assert maskable(ROWS).sum() >= 100_000
    sel = selected_mask(out, ids.shape)
    assert not (sel & ~maskable(ROWS)).any(), "a special token or padding was selected"
    assert abs(sel.sum() / maskable(ROWS).sum() - 0.15) < 0.01

    labels = out["masked_labels"].numpy()
    np.testing.assert_array_equal(labels, ids.reshape(-1)[out["masked_positions"].numpy()])
    shown = out["input_ids"].numpy().reshape(-1)[out["masked_positions"].numpy()]
    as_mask = shown == SPECIAL_IDS["mask"]
    kept = shown == labels
    randomised = ~as_mask & ~kept
    assert abs(as_mask.mean() - 0.8) < 0.015
    assert abs(kept.mean() - 0.1) < 0.015  # includes the ~0.2% random draws that hit the original id
    assert abs(randomised.mean() - 0.1) < 0.015
    assert not np.isin(shown[randomised], list(SPECIAL_IDS.values())).any()
    # Unselected tokens are unchanged.
    np.testing.assert_array_equal(out["input_ids"].numpy()[~sel], ids[~sel])
    assert torch.equal(out["attention_mask"].sum(1), torch.from_numpy(ROWS["length"].astype(np.int64)))


@pytest.mark.parametrize("cfg", [MaskingConfig(whole_word=True), MaskingConfig(span=True)])
def test_whole_words_are_masked_entirely_or_not_at_all(cfg):
    out = collate(ROWS, cfg)
    sel = selected_mask(out, ROWS["input_ids"].shape)
    word_id = np.cumsum(ROWS["word_start"], axis=1)
    candidates = maskable(ROWS)
    for r in range(64):
        for w in np.unique(word_id[r][candidates[r]]):
            in_word = (word_id[r] == w) & candidates[r]
            assert sel[r][in_word].all() or not sel[r][in_word].any(), f"row {r} word {w} partly masked"


def test_span_masking_makes_runs_of_several_words():
    out = collate(ROWS, MaskingConfig(span=True, span_mean_length=3.0))
    sel = selected_mask(out, ROWS["input_ids"].shape)
    words = np.cumsum(ROWS["word_start"], axis=1)
    masked_word_runs = []
    for r in range(200):
        masked_words = np.unique(words[r][sel[r]])
        if len(masked_words):
            breaks = np.flatnonzero(np.diff(masked_words) != 1)
            masked_word_runs.append(len(masked_words) / (len(breaks) + 1))
    assert np.mean(masked_word_runs) > 2.0  # token-level or word-level masking gives runs of ~1.2 words


def test_same_sample_same_mask_in_any_batch_or_rank():
    indices = np.arange(1000, 1016)
    rows = {k: v[:16] for k, v in ROWS.items()}
    whole = collate(rows, indices=indices, epoch=2)
    # Two ranks collate their halves, in another order; each sample must get the same masked ids.
    for part in (np.arange(8)[::-1].copy(), np.arange(8, 16)):
        sub = collate({k: v[part] for k, v in rows.items()}, indices=indices[part], epoch=2)
        assert torch.equal(sub["input_ids"], whole["input_ids"][part])
        sub_mask = sub.get("attention_mask", torch.ones_like(sub["input_ids"]))  # absent: no padding
        assert torch.equal(sub_mask, whole["attention_mask"][part])
    # Another epoch or seed gives another mask.
    assert not torch.equal(collate(rows, indices=indices, epoch=3)["input_ids"], whole["input_ids"])
    assert not torch.equal(collate(rows, indices=indices, epoch=2, seed=4)["input_ids"], whole["input_ids"])


def test_pairs_give_token_types_and_labels(pair_rows):
    out = collate(pair_rows)
    types = out["token_type_ids"].numpy()
    for r in range(len(pair_rows["length"])):
        b, n = pair_rows["segment_b_start"][r], pair_rows["length"][r]
        assert types[r, :b].sum() == 0 and types[r, b:n].all() and types[r, n:].sum() == 0
    assert torch.equal(out["pair_labels"], torch.from_numpy(pair_rows["pair_label"].astype(np.int64)))
    assert out["input_ids"].dtype == torch.int64 and out["masked_positions"].dtype == torch.int64


def test_seq_len_truncates_rows():
    collator = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=0, seq_len=64
    )
    out = collator.collate(ROWS, np.arange(len(ROWS["length"])), 0)
    assert out["input_ids"].shape == (1024, 64)
    assert int(out["masked_positions"].max()) < 1024 * 64
    with pytest.raises(ValueError, match="seq_len 256 is longer than the rows' 192 tokens"):
        MaskingCollator(
            MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=0, seq_len=256
        ).collate(ROWS, np.arange(len(ROWS["length"])), 0)


def test_whole_word_masking_on_real_wordpiece_text(wordpiece_rows):
    rows, tokenizer = wordpiece_rows
    vocab = {i: t for t, i in tokenizer.backend.get_vocab().items()}
    collator = MaskingCollator(
        MaskingConfig(whole_word=True),
        special_ids=tokenizer.special_ids,
        vocab_size=tokenizer.vocab_size,
        seed=0,
    )
    out = collator.collate(rows, np.arange(len(rows["length"])), 0)
    ids = rows["input_ids"].astype(np.int64)
    sel = selected_mask(out, ids.shape)
    assert sel.sum() > 1000 and abs(sel.sum() / (ids.size - 2 * len(ids)) - 0.15) < 0.02
    pieces = np.vectorize(lambda i: vocab[i].startswith("##"))(ids)
    assert pieces[:, 1:].sum() > 1000  # the text really has multi-piece words
    # A "##" continuation is masked exactly when the piece before it (same word) is, except at row start.
    inner = pieces[:, 2:63]
    np.testing.assert_array_equal(sel[:, 2:63][inner], sel[:, 1:62][inner])


def test_the_batch_holds_only_the_keys_the_model_takes(pair_rows):
    keys = ("input_ids", "attention_mask", "masked_positions", "masked_labels")
    collator = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=3, batch_keys=keys
    )
    out = collator.collate(pair_rows, np.arange(len(pair_rows["length"])), 0)
    assert tuple(out) == keys  # no token_type_ids, no pair_labels
    assert torch.equal(out["input_ids"], collate(pair_rows, seed=3)["input_ids"])  # the same masks


def test_attention_mask_only_when_some_row_is_padded():
    rows = {k: v[:8] for k, v in ROWS.items()}
    padded = collate(rows, indices=np.arange(8), epoch=0)
    assert padded["attention_mask"].sum() == int(rows["length"].sum())
    shortest = int(rows["length"].min())
    collator = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=3, seq_len=shortest
    )
    unpadded = collator.collate(rows, np.arange(8), 0)
    assert "attention_mask" not in unpadded  # the model then passes no mask: no host check of it
    assert torch.equal(unpadded["input_ids"], padded["input_ids"][:, :shortest])


def test_document_keys_describe_the_rows_as_cut_to_seq_len():
    rows = make_rows(6, 32, seed=4, documents=True)
    keys = ("input_ids", "document_ids", "position_ids", "cu_seqlens", "unpad_indices", "masked_labels")
    collator = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=3, seq_len=20, batch_keys=keys
    )
    out = collator.collate(rows, np.arange(6), 0)
    assert set(out) == set(keys)
    lengths = np.minimum(rows["length"], 20)
    ids = out["document_ids"].numpy()
    assert ids.shape == (6, 20) and out["position_ids"].shape == (6, 20)
    assert out["cu_seqlens"].dtype == torch.int32 and int(out["cu_seqlens"][-1]) == lengths.sum()
    assert out["unpad_indices"].numel() == lengths.sum()
    for r in range(6):
        starts = np.flatnonzero(rows["doc_start"][r, : lengths[r]])  # documents beyond 20 tokens are cut
        assert ids[r, : lengths[r]].max() == len(starts) and (ids[r, lengths[r] :] == 0).all()
        for doc, (a, b) in enumerate(zip(starts, [*starts[1:], lengths[r]], strict=True), start=1):
            assert (ids[r, a:b] == doc).all()
            assert out["position_ids"][r, a:b].tolist() == list(range(b - a))
    assert (rows["length"] > 20).any() and (rows["doc_start"][:, 20:].sum(axis=1) > 0).any()


def test_document_keys_only_when_asked_and_refused_on_rows_without_doc_start():
    rows = make_rows(4, 16, seed=5, documents=True)
    plain = collate(rows)
    assert not set(plain) & {"document_ids", "position_ids", "cu_seqlens", "unpad_indices"}
    asking = MaskingCollator(
        MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=3, batch_keys=("document_ids",)
    )
    with pytest.raises(ValueError, match="rows have no doc_start column .* rebuild the shards"):
        asking.collate(make_rows(4, 16, seed=5), np.arange(4), 0)
