"""The MLM masking collator: shard rows -> masked model inputs, vectorised per batch.

A sample's mask is a pure function of (seed, epoch, sample index): every random number is a
counter-based hash of (seed, stream, epoch, sample index, position), so the same sample gets the same
mask whatever batch, rank or world size it lands in, and no RNG state has to be checkpointed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from data_pipeline.errors import DataError
from pretrain.config import MaskingConfig
from pretrain.data.documents import DOCUMENT_KEYS, document_inputs

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Independent random streams: which units are selected, how each is corrupted, the random token, span length.
_SELECT, _CORRUPT, _RANDOM_TOKEN, _SPAN_LENGTH = 1, 2, 3, 4


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic): a well-spread 64-bit hash."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform_per_position(
    seed: int, stream: int, epoch: int, sample_indices: np.ndarray, seq_len: int
) -> np.ndarray:
    """Uniform floats in [0, 1) of shape (len(sample_indices), seq_len), a pure function of all inputs."""
    key = np.array([seed & _MASK64], dtype=np.uint64)
    key = _mix(_mix(key ^ np.uint64(stream)) + np.uint64(epoch & _MASK64))
    rows = _mix(key + np.asarray(sample_indices, dtype=np.int64).astype(np.uint64))
    positions = np.arange(seq_len, dtype=np.uint64) * _GOLDEN
    bits = _mix(rows[:, None] + positions[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _special_id_list(special_ids) -> list[int]:
    if isinstance(special_ids, Mapping):
        return sorted({int(v) for v in special_ids.values()})
    return sorted({int(v) for v in special_ids.to_dict().values()})


def _pad_id(special_ids) -> int:
    return int(special_ids["pad"] if isinstance(special_ids, Mapping) else special_ids.pad)


def _mask_id(special_ids) -> int:
    return int(special_ids["mask"] if isinstance(special_ids, Mapping) else special_ids.mask)


class MaskingCollator:
    """Turns shard rows into masked MLM inputs.

    Takes the masking config section, the tokenizer's special ids (a `data_pipeline.tokenizer.load.SpecialIds`
    or the manifest's {"pad", "unk", "cls", "sep", "mask"} dict), the vocabulary size, the run's seed and
    optionally `seq_len` (train on the first seq_len tokens of each row; None = the rows' length) and
    `batch_keys` (the keys the model takes, `PretrainingModel.batch_keys`: the others are left out of the
    batch; None keeps them all). The document keys (pretrain/data/documents.py `DOCUMENT_KEYS`) are
    computed only when `batch_keys` names one of them.
    Special tokens and padding are never selected; random replacements come from the non-special
    vocabulary.
    """

    def __init__(
        self,
        masking_cfg: MaskingConfig,
        *,
        special_ids,
        vocab_size: int,
        seed: int,
        seq_len: int | None = None,
        batch_keys: tuple[str, ...] | None = None,
    ) -> None:
        """Prepare the collator; raises DataError if the vocabulary has no non-special token."""
        self.cfg = masking_cfg
        self.seed = seed
        self.seq_len = seq_len
        self.batch_keys = batch_keys
        self.wants_documents = batch_keys is not None and any(k in DOCUMENT_KEYS for k in batch_keys)
        self.pad_id = _pad_id(special_ids)
        self.mask_id = _mask_id(special_ids)
        self.special = np.array(_special_id_list(special_ids), dtype=np.int64)
        self.replacement_ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), self.special)
        if len(self.replacement_ids) == 0:
            raise DataError(f"vocabulary of size {vocab_size} has no non-special token to mask")
        if masking_cfg.span:
            p = 1.0 / masking_cfg.span_mean_length
            clipped_mean = sum((1 - p) ** k for k in range(masking_cfg.span_max_length))
            # Spans start at a word with probability q; with overlaps, words are covered at about
            # 1 - exp(-q * mean span), so this q hits `probability` in expectation.
            self._span_start_prob = -math.log(1.0 - masking_cfg.probability) / clipped_mean

    def collate(
        self, rows: Mapping[str, np.ndarray], sample_indices: np.ndarray, epoch: int
    ) -> dict[str, torch.Tensor]:
        """Mask one micro-batch.

        Takes `rows` from `ShardReader.take` (input_ids, word_start[, doc_start], length[,
        segment_b_start, pair_label]), the global sample indices of those rows and the epoch. Returns int64
        tensors: input_ids (masked), attention_mask (only when some row is padded: an unpadded batch needs
        no mask, and passing none spares the model a host sync), token_type_ids (all (batch, seq)),
        masked_positions (flat indices into batch*seq, ascending), masked_labels (original ids there),
        pair_labels (batch,) when the rows have pairs and, when `batch_keys` asks for them, the document
        keys of the rows as cut to `seq_len` (`document_inputs`: document_ids, position_ids, cu_seqlens
        int32, unpad_indices); of these, only the collator's `batch_keys`. Raises DataError when the
        document keys are asked for and the rows have no doc_start.
        """
        ids = np.asarray(rows["input_ids"], dtype=np.int64)
        word_start = np.asarray(rows["word_start"]).astype(bool)
        if self.seq_len is not None:
            if self.seq_len > ids.shape[1]:
                raise ValueError(f"seq_len {self.seq_len} is longer than the rows' {ids.shape[1]} tokens")
            ids, word_start = ids[:, : self.seq_len], word_start[:, : self.seq_len]
        batch, seq = ids.shape
        positions = np.arange(seq)[None, :]
        lengths = np.minimum(np.asarray(rows["length"], dtype=np.int64), seq)[:, None]
        in_sequence = positions < lengths
        candidates = in_sequence & ~np.isin(ids, self.special)

        selected = self._select(word_start, candidates, sample_indices, epoch, seq)
        corrupt = uniform_per_position(self.seed, _CORRUPT, epoch, sample_indices, seq)
        use_mask = selected & (corrupt < self.cfg.mask_token_ratio)
        use_random = (
            selected & ~use_mask & (corrupt < self.cfg.mask_token_ratio + self.cfg.random_token_ratio)
        )
        random_u = uniform_per_position(self.seed, _RANDOM_TOKEN, epoch, sample_indices, seq)
        random_ids = self.replacement_ids[(random_u * len(self.replacement_ids)).astype(np.int64)]

        masked_ids = np.where(use_mask, self.mask_id, np.where(use_random, random_ids, ids))
        flat_positions = np.flatnonzero(selected)
        out = {"input_ids": torch.from_numpy(masked_ids)}
        if not in_sequence.all():
            out["attention_mask"] = torch.from_numpy(in_sequence.astype(np.int64))
        out |= {
            "token_type_ids": torch.zeros((batch, seq), dtype=torch.int64),
            "masked_positions": torch.from_numpy(flat_positions.astype(np.int64)),
            "masked_labels": torch.from_numpy(ids.reshape(-1)[flat_positions]),
        }
        if "segment_b_start" in rows:
            b_start = np.asarray(rows["segment_b_start"], dtype=np.int64)[:, None]
            out["token_type_ids"] = torch.from_numpy(((positions >= b_start) & in_sequence).astype(np.int64))
        if "pair_label" in rows:
            out["pair_labels"] = torch.from_numpy(np.asarray(rows["pair_label"], dtype=np.int64))
        if self.wants_documents:
            out |= self._document_keys(rows, seq, lengths[:, 0])
        if self.batch_keys is not None:
            out = {key: value for key, value in out.items() if key in self.batch_keys}
        return out

    __call__ = collate

    @staticmethod
    def _document_keys(
        rows: Mapping[str, np.ndarray], seq: int, lengths: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """The document layout of rows cut to `seq` tokens (a document cut off at the end just ends there)."""
        if "doc_start" not in rows:
            raise DataError(
                "the model takes document inputs but the rows have no doc_start column (shards of format "
                "1); rebuild the shards with this version's `mlm-data build`"
            )
        layout = document_inputs(np.asarray(rows["doc_start"])[:, :seq], lengths)
        return {key: torch.from_numpy(value) for key, value in layout.items()}

    def _select(
        self, word_start: np.ndarray, candidates: np.ndarray, sample_indices: np.ndarray, epoch: int, seq: int
    ) -> np.ndarray:
        """Boolean (batch, seq): which tokens the model must predict."""
        u = uniform_per_position(self.seed, _SELECT, epoch, sample_indices, seq)
        if not (self.cfg.whole_word or self.cfg.span):
            return candidates & (u < self.cfg.probability)
        positions = np.broadcast_to(np.arange(seq), word_start.shape)
        # Every token looks up its word's first position (a continuation piece carries its word's start).
        word_first = np.maximum.accumulate(np.where(word_start, positions, 0), axis=1)
        if not self.cfg.span:
            word_selected = np.take_along_axis(u, word_first, axis=1) < self.cfg.probability
            return candidates & word_selected
        # Span masking over words: a word starts a span with probability q; the span covers the next
        # L words (L geometric, clipped); a token is covered when some earlier start reaches past its word.
        word_index = np.cumsum(word_start, axis=1) - 1
        starts = word_start & candidates & (u < self._span_start_prob)
        length_u = uniform_per_position(self.seed, _SPAN_LENGTH, epoch, sample_indices, seq)
        p = 1.0 / self.cfg.span_mean_length
        if p < 1.0:
            lengths = 1 + np.floor(np.log1p(-length_u) / math.log1p(-p)).astype(np.int64)
        else:
            lengths = np.ones_like(word_index)
        lengths = np.minimum(lengths, self.cfg.span_max_length)
        reach = np.maximum.accumulate(np.where(starts, word_index + lengths, -1), axis=1)
        return candidates & (reach > word_index)
