"""Where the documents of packed rows lie, for attention that keeps each document to itself.

A row is packed from several documents (data_pipeline/build/packing.py); shards of format 2 mark the
first token of each document (or of the part of a document that continues from the previous row) in
their `doc_start` column. From that column and the rows' lengths, `document_inputs` derives the batch
inputs every attention backend takes: per-token document numbers (the reference boolean mask),
positions that restart at each document (rotary or learned positions), and the cumulative document
lengths over the unpadded tokens (the varlen/FlashAttention interface, with the gather indices that
unpad a batch). All of it is computed on the CPU in the loader, so the device never has to be asked
where a document ends.
"""

from __future__ import annotations

import numpy as np

# The batch keys `document_inputs` produces; a model that lists any of them in its `batch_keys` asks the
# collator for document-isolated inputs.
DOCUMENT_KEYS = ("document_ids", "position_ids", "cu_seqlens", "unpad_indices")


def document_inputs(doc_start: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The document layout of a batch of rows.

    doc_start: (batch, seq) bool or 0/1, true at the first token of each document in a row (position 0
    always starts one, whatever it holds); lengths: (batch,) tokens in use per row, the rest is padding.
    Returns numpy arrays:
    - document_ids (batch, seq) int64: 1, 2, ... numbering the documents of each row left to right, 0 on
      padding;
    - position_ids (batch, seq) int64: each token's position within its document, 0 on padding;
    - cu_seqlens (documents + 1,) int32: 0 then the cumulative lengths of the batch's documents, in row
      order, over the unpadded tokens;
    - unpad_indices (tokens,) int64: the flat indices into batch * seq of the unpadded tokens, ascending
      (so `hidden.view(-1, d)[unpad_indices]` is the packed sequence that cu_seqlens describes).
    """
    doc_start = np.asarray(doc_start).astype(bool)
    batch, seq = doc_start.shape
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), seq)
    positions = np.arange(seq)
    in_row = positions[None, :] < lengths[:, None]
    starts = doc_start & in_row
    starts[:, 0] = lengths > 0
    document_ids = np.cumsum(starts, axis=1) * in_row
    last_start = np.maximum.accumulate(np.where(starts, positions[None, :], 0), axis=1)
    position_ids = (positions[None, :] - last_start) * in_row
    unpad_indices = np.flatnonzero(in_row)
    # Every used row opens with a start, so a running count of starts numbers the documents batch-wide.
    batch_document = np.cumsum(starts.reshape(-1))[unpad_indices] - 1
    sizes = np.bincount(batch_document, minlength=int(starts.sum()))
    cu_seqlens = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return {
        "document_ids": document_ids.astype(np.int64),
        "position_ids": position_ids.astype(np.int64),
        "cu_seqlens": cu_seqlens,
        "unpad_indices": unpad_indices.astype(np.int64),
    }
