"""What every architecture's pretraining model returns for one micro-batch (the trainer's only view of it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
