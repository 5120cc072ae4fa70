"""The reference attention mask for packed rows: block-diagonal by document, optionally a sliding window.

Every architecture's reference attention path (SDPA with a boolean mask, which runs forward and backward
on every device) builds its mask here, and the fast GPU paths are tested against it.
"""

from __future__ import annotations

import torch


def document_attention_mask(document_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(batch, 1, seq, seq) bool, true where query i may attend key j.

    document_ids: (batch, seq) from pretrain/data/documents.py (1, 2, ... per document, 0 on padding).
    A query attends the keys of its own document; with `window`, only those at most window // 2 positions
    away (ModernBERT's local attention). A padding query attends itself only, so no row of the mask is
    empty (an empty row makes SDPA return NaN); padding outputs are never read.
    """
    same = (document_ids[:, :, None] == document_ids[:, None, :]) & (document_ids[:, None, :] != 0)
    seq = document_ids.shape[1]
    positions = torch.arange(seq, device=document_ids.device)
    if window is not None:
        same &= (positions[:, None] - positions[None, :]).abs() <= window // 2
    return (same | (positions[:, None] == positions[None, :]))[:, None]
