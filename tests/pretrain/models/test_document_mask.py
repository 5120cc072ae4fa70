import torch

from pretrain.models.document_mask import document_attention_mask


def test_block_diagonal_with_window_and_padding():
    ids = torch.tensor([[1, 1, 1, 2, 2, 0]])
    mask = document_attention_mask(ids)[0, 0]
    assert mask.shape == (6, 6)
    assert mask[:3, :3].all() and mask[3:5, 3:5].all()
    assert not mask[:3, 3:].any() and not mask[3:5, :3].any()
    assert not mask[:5, 5].any() and mask[5].tolist() == [False] * 5 + [True]
    local = document_attention_mask(ids, window=2)[0, 0]
    assert local[0].tolist() == [True, True, False, False, False, False]
    assert local[3].tolist() == [False, False, False, True, True, False]
