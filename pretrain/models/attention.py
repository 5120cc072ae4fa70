"""Attention over packed rows whose documents never see each other: one interface, several kernels.

Every backend takes the document layout that pretrain/data/documents.py computes on the CPU and answers
for one layer: global (the whole document) or local (`window`: window // 2 tokens each side, inside the
document). Two layouts:

- padded backends (`sdpa`, `flex`) take q, k, v as (batch, seq, heads, head_dim) plus a per-forward
  mask built once from `document_ids` (`prepare`): a boolean (batch, 1, seq, seq) tensor for SDPA, the
  reference that runs everywhere; a FlexAttention `BlockMask`, whose kernel skips the blocks a document
  boundary or the window rules out;
- unpadded backends (`varlen`, `flash`) take the packed tokens (tokens, heads, head_dim) and `cu_seqlens`
  (no FLOPs on padding or across documents), with max_seqlen = the row width (an upper bound, so nothing
  is read back from the device).

Which backend runs is `select_backend`'s answer (pretrain/models/attention_select.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from pretrain.models.document_mask import document_attention_mask


@dataclass(frozen=True)
class AttentionBackend:
    """One attention kernel: `name`, whether it takes the unpadded tokens, and its two functions.

    prepare(document_ids, window) -> the mask object its `attend` takes (padded backends; None for the
    unpadded ones); attend(q, k, v, *, mask, cu_seqlens, max_seqlen, window) -> the attention output in
    the layout of q.
    """

    name: str
    unpadded: bool
    attend: Callable
    prepare: Callable | None = None


def _sdpa_prepare(document_ids: torch.Tensor, window: int | None) -> torch.Tensor:
    return document_attention_mask(document_ids, window)


def _sdpa_attend(q, k, v, *, mask, cu_seqlens=None, max_seqlen=None, window=None):
    # (batch, seq, heads, dim) -> SDPA's (batch, heads, seq, dim) and back.
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def _flex_prepare(document_ids: torch.Tensor, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    half = None if window is None else window // 2

    def may_attend(b, h, q_idx, kv_idx):
        # The reference mask's rule (document_mask.py), written for FlexAttention's index functions.
        same = (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (document_ids[b, kv_idx] != 0)
        if half is not None:
            same = same & ((q_idx - kv_idx).abs() <= half)
        return same | (q_idx == kv_idx)

    batch, seq = document_ids.shape
    return create_block_mask(may_attend, batch, None, seq, seq, device=document_ids.device)


@lru_cache(maxsize=1)
def _compiled_flex():
    """FlexAttention compiled once per process: uncompiled, it materialises the full score matrix."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.cuda.is_available():
        return torch.compile(flex_attention, dynamic=False)
    return flex_attention  # CPU (forward only): the unfused reference implementation


def _flex_attend(q, k, v, *, mask, cu_seqlens=None, max_seqlen=None, window=None):
    out = _compiled_flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask)
    return out.transpose(1, 2)


def _half_window(window: int | None) -> tuple[int, int]:
    # Both kernels take an inclusive (left, right) window; (-1, -1) is no window.
    return (-1, -1) if window is None else (window // 2, window // 2)


def _varlen_attend(q, k, v, *, mask=None, cu_seqlens, max_seqlen, window=None):
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, window_size=_half_window(window)
    )


def _flash_attend(q, k, v, *, mask=None, cu_seqlens, max_seqlen, window=None):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        causal=False,
        window_size=_half_window(window),
    )


BACKENDS: dict[str, AttentionBackend] = {
    "sdpa": AttentionBackend("sdpa", unpadded=False, attend=_sdpa_attend, prepare=_sdpa_prepare),
    "flex": AttentionBackend("flex", unpadded=False, attend=_flex_attend, prepare=_flex_prepare),
    "varlen": AttentionBackend("varlen", unpadded=True, attend=_varlen_attend),
    "flash": AttentionBackend("flash", unpadded=True, attend=_flash_attend),
}
