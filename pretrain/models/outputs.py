"""What every architecture's pretraining model returns for one micro-batch (the trainer's only view of it),
and how its sums and counts come from the heads' logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PretrainingOutput:
    """Sums and counts of one micro-batch, so the trainer can normalise over micro-batches and ranks.

    mlm_loss_sum: fp32 scalar, summed cross-entropy over the masked tokens; mlm_correct / num_masked:
    int64 scalars. pair_loss_sum / pair_correct / num_pairs: the same for the NSP/SOP head (zeros when
    the model has none or no pair labels were given).
    """

    mlm_loss_sum: torch.Tensor
    mlm_correct: torch.Tensor
    num_masked: torch.Tensor
    pair_loss_sum: torch.Tensor
    pair_correct: torch.Tensor
    num_pairs: torch.Tensor


def pretraining_output(
    logits: torch.Tensor,
    masked_labels: torch.Tensor,
    pair_logits: torch.Tensor | None = None,
    pair_labels: torch.Tensor | None = None,
) -> PretrainingOutput:
    """The sums and counts of one micro-batch from the MLM head's fp32 `logits` at the masked positions
    (masked, vocab) and their original ids `masked_labels`, and from a pair head's fp32 `pair_logits`
    (batch, 2) with `pair_labels` when given (zeros otherwise)."""
    mlm_loss_sum = F.cross_entropy(logits, masked_labels, reduction="sum")
    mlm_correct = (logits.argmax(-1) == masked_labels).sum()
    # torch.full fills on the device from a kernel argument: unlike torch.tensor(n, device=...) it copies
    # nothing from host memory, so it never blocks the host on a GPU.
    num_masked = torch.full((), masked_labels.numel(), dtype=torch.int64, device=logits.device)
    zero = torch.zeros((), device=logits.device)
    pair_loss_sum, pair_correct, num_pairs = zero, zero.long(), zero.long()
    if pair_logits is not None:
        pair_loss_sum = F.cross_entropy(pair_logits, pair_labels, reduction="sum")
        pair_correct = (pair_logits.argmax(-1) == pair_labels).sum()
        num_pairs = torch.full((), pair_labels.numel(), dtype=torch.int64, device=logits.device)
    return PretrainingOutput(mlm_loss_sum, mlm_correct, num_masked, pair_loss_sum, pair_correct, num_pairs)
