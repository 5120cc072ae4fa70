"""The row source: what the trainer reads training rows through, and how a run opens its sources.

One shards directory (data_pipeline.shards.ShardReader) is one source; a weighted mixture of shard sets
(data.sources) is another (pretrain/data/mixture.py). Another storage is one new class with these
members: the sampler, the loaders, masking, the run identity and resume only use what the protocol names.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pretrain.config import ConfigError, DataConfig
from pretrain.data.documents import DOCUMENT_KEYS


@runtime_checkable
class RowSource(Protocol):
    """Fixed-length rows by global index, plus the facts a run is checked and identified by.

    `take(indices, epoch)` returns the rows of global samples `indices` of sample epoch `epoch` (a
    shard set's rows do not depend on it, a mixture's do) stacked (input_ids, word_start[, doc_start],
    length[, segment_b_start, pair_label]) and raises DataError naming the damaged file and row;
    `seq_len` is the row width, `has_pairs` whether rows carry a sentence pair, `has_document_starts`
    whether they carry `doc_start` (where each packed document starts: shards of format 2 on);
    `vocab_size`, `special_ids` ({"pad", "unk", "cls", "sep", "mask"}), `tokenizer_fingerprint` and
    `tokenizer_dir` describe the tokenizer the ids belong to; `data_identity()` is a hex digest of what
    the rows are made of (another corpus or build setting gives another), `content_identity()` a hex
    digest of the rows' bytes themselves (a corpus edited keeping its size and rebuilt gives another);
    `name` says where the rows come from, for error messages.
    """

    seq_len: int
    has_pairs: bool
    has_document_starts: bool
    vocab_size: int
    special_ids: dict[str, int]
    tokenizer_fingerprint: str
    tokenizer_dir: str
    name: str

    def __len__(self) -> int: ...

    def take(self, indices: np.ndarray, epoch: int = 0) -> dict[str, np.ndarray]: ...

    def data_identity(self) -> str: ...

    def content_identity(self) -> str: ...


def open_row_sources(data_cfg: DataConfig, *, seed: int) -> tuple[RowSource, RowSource]:
    """(train source, validation source) of the data section: the shard set of data.path, or the
    mixture of data.sources (pretrain/data/mixture.py), whose row order is keyed by `seed` (train.seed).

    Raises data_pipeline.errors.DataError naming the file when a manifest or a shard is missing or has
    the wrong size, and, for a mixture, naming the pair of sources that cannot be trained together.
    """
    if data_cfg.is_mixture:
        from pretrain.data.mixture import open_mixture

        return open_mixture(data_cfg, seed=seed)
    from data_pipeline.shards import ShardReader

    return ShardReader(data_cfg.path, split="train"), ShardReader(data_cfg.path, split="validation")


def check_document_starts(source: RowSource, batch_keys: tuple[str, ...], arch: str) -> None:
    """Refuse a model that keeps attention inside each document (its `batch_keys` name some of
    pretrain.data.documents.DOCUMENT_KEYS) on a source whose rows do not say where documents start.

    Raises ConfigError naming the source and how to rebuild it (shards of format 1 lack doc_start).
    """
    asked = [key for key in batch_keys if key in DOCUMENT_KEYS]
    if asked and not source.has_document_starts:
        raise ConfigError(
            f"model.arch={arch} keeps attention inside each document (it takes {', '.join(asked)}) but "
            f"{source.name} do not record where documents start (shards of format 1, built before "
            "mlm-data wrote the doc_start column); rebuild them with this version's `mlm-data build` "
            "(the same inputs and settings, --overwrite to replace them in place)"
        )


def is_mixture(source) -> bool:
    """Whether the row source is a mixture of named sources (it then has `source_names`,
    `count_sources`, `source_epochs` and `weights`: pretrain/data/mixture.py)."""
    return hasattr(source, "source_names")


def resolve_seq_len(data_cfg: DataConfig, source: RowSource, *, max_positions: int) -> int:
    """The sequence length to train on: data.seq_len, or the source's row width when unset.

    Raises ConfigError naming the source when data.seq_len exceeds its rows, or when the length exceeds
    the longest row the model takes (`max_positions`: BERT's model.max_position_embeddings).
    """
    seq_len = source.seq_len if data_cfg.seq_len is None else data_cfg.seq_len
    if seq_len > source.seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} but {source.name} hold rows of {source.seq_len} tokens; "
            f"lower data.seq_len or rebuild the shards with --seq-len {seq_len}"
        )
    if seq_len > max_positions:
        raise ConfigError(
            f"sequence length {seq_len} ({source.name}) exceeds model.max_position_embeddings="
            f"{max_positions}; raise it or train on shorter rows (data.seq_len)"
        )
    return seq_len
