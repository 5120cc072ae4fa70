"""THE Arrow schema of a shard, `ShardWriter` (temp name, then rename) and `ShardReader` (memory-mapped).

A shard is an Arrow IPC *stream* file (what `datasets.Dataset.from_file` reads) of fixed-length rows:
`input_ids`, `word_start`, `doc_start` (format 2 on), `length` and, for nsp/sop builds,
`segment_b_start` and `pair_label`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from data_pipeline.errors import DataError
from data_pipeline.integrity import commit_temp, file_sha256, remove_quietly, size_problem, temp_path
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.manifest_schema import SPLITS, has_pairs

BATCH_ROWS = 4096  # rows per Arrow record batch inside a shard


def id_dtype_for(vocab_size: int) -> str:
    """'uint16' when every id fits in 16 bits (vocab_size <= 65536), else 'uint32'."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def shard_schema(seq_len: int, id_dtype: str, with_pairs: bool, with_doc_start: bool = True) -> pa.Schema:
    """The one schema of every shard: fixed-size-list token columns of `seq_len`, pair columns optional;
    `with_doc_start=False` is the schema of format 1 shards (no `doc_start`), which readers still read."""
    fields = [
        pa.field("input_ids", pa.list_(pa.from_numpy_dtype(np.dtype(id_dtype)), seq_len), nullable=False),
        pa.field("word_start", pa.list_(pa.uint8(), seq_len), nullable=False),
    ]
    if with_doc_start:
        fields.append(pa.field("doc_start", pa.list_(pa.uint8(), seq_len), nullable=False))
    fields.append(pa.field("length", pa.int32(), nullable=False))
    if with_pairs:
        fields.append(pa.field("segment_b_start", pa.int32(), nullable=False))
        fields.append(pa.field("pair_label", pa.int8(), nullable=False))
    return pa.schema(fields)


def _primitive(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    # Zero-copy from the numpy buffer; pa.array() would import pandas on first use (about a second).
    values = np.ascontiguousarray(values, dtype=arrow_type.to_pandas_dtype()).reshape(-1)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def rows_to_batch(rows: dict[str, np.ndarray], schema: pa.Schema) -> pa.RecordBatch:
    """Turn 2-D token columns (`input_ids`, `word_start`, `doc_start`) and 1-D other columns (numpy) into a
    record batch of `schema`."""
    arrays = []
    for field in schema:
        values = rows[field.name]
        if pa.types.is_fixed_size_list(field.type):
            flat = _primitive(values, field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
        else:
            arrays.append(_primitive(values, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class ShardWriter:
    """Writes one shard to `<path>.tmp` and renames it to `path` on `close()` (never a partial shard).

    `write(rows)` appends a dict of numpy columns; `close()` returns (rows, tokens) written.
    """

    def __init__(self, path: str, schema: pa.Schema) -> None:
        """Open `path + '.tmp'` for writing shards of `schema`."""
        self.path = path
        self.schema = schema
        self.rows = 0
        self.tokens = 0
        self._tmp = temp_path(path)
        self._sink = pa.OSFile(self._tmp, "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def write(self, rows: dict[str, np.ndarray]) -> None:
        """Append rows (a dict of column arrays with equal first dimension)."""
        if len(rows["length"]) == 0:
            return
        self._writer.write_batch(rows_to_batch(rows, self.schema))
        self.rows += len(rows["length"])
        self.tokens += int(np.asarray(rows["length"], dtype=np.int64).sum())

    def close(self) -> tuple[int, int]:
        """Finish the stream, fsync, rename into place; return (rows, tokens)."""
        self._writer.close()
        self._sink.close()
        commit_temp(self._tmp, self.path)
        return self.rows, self.tokens

    def abort(self) -> None:
        """Drop the temporary file (after an error)."""
        try:
            self._writer.close()
            self._sink.close()
        finally:
            remove_quietly(self._tmp)


class ShardSink:
    """Writes one split's rows into shards of at most `rows_per_shard` rows, named split-NNNNN.arrow.

    Rows are re-cut into record batches of BATCH_ROWS whatever sizes they arrive in, so the bytes of a
    shard depend only on its rows.
    """

    def __init__(self, out: str, split: str, schema: pa.Schema, rows_per_shard: int) -> None:
        """Shards of `schema` named `out/split-NNNNN.arrow`, each at most `rows_per_shard` rows."""
        self.out, self.split, self.schema, self.limit = out, split, schema, rows_per_shard
        self.shards: list[dict] = []
        self.writer: ShardWriter | None = None
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0

    def write(self, rows: dict[str, np.ndarray]) -> None:
        """Queue rows (dict of column arrays); full record batches and full shards are written at once."""
        if len(rows["length"]):
            self.pending.append(rows)
            self.pending_rows += len(rows["length"])
        while self.pending_rows >= self._next_batch():
            self._write_batch(self._next_batch())

    def finish(self) -> dict:
        """Write what is queued and close the last shard; return the split's manifest entry
        ({"rows", "tokens", "shards": [{"file", "rows", "tokens", "bytes", "sha256"}]})."""
        while self.pending_rows:
            self._write_batch(min(self.pending_rows, self._next_batch()))
        if self.writer is not None:
            self._close()
        return {
            "rows": sum(s["rows"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            "shards": self.shards,
        }

    def _next_batch(self) -> int:
        return min(BATCH_ROWS, self.limit - (self.writer.rows if self.writer is not None else 0))

    def _write_batch(self, k: int) -> None:
        rows = {key: np.concatenate([p[key] for p in self.pending]) for key in self.pending[0]}
        self.pending = [{key: v[k:] for key, v in rows.items()}]
        self.pending_rows -= k
        if self.writer is None:
            name = f"{self.split}-{len(self.shards):05d}.arrow"
            self.writer = ShardWriter(os.path.join(self.out, name), self.schema)
        self.writer.write({key: v[:k] for key, v in rows.items()})
        if self.writer.rows >= self.limit:
            self._close()

    def _close(self) -> None:
        path = self.writer.path
        rows, tokens = self.writer.close()
        self.shards.append(
            {
                "file": os.path.basename(path),
                "rows": rows,
                "tokens": tokens,
                "bytes": os.path.getsize(path),
                "sha256": file_sha256(path),
            }
        )
        self.writer = None


def read_shard_batches(path: str) -> list[pa.RecordBatch]:
    """Memory-map one shard and return its record batches (zero-copy). Raises DataError naming the file."""
    try:
        source = pa.memory_map(path, "r")
        return list(pa.ipc.open_stream(source))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: not a readable Arrow IPC stream ({exc}); run `mlm-data verify`") from exc


def batch_to_numpy(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """Columns of a record batch as numpy views: token columns 2-D (rows, seq_len), others 1-D."""
    out = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_fixed_size_list(column.type):
            flat = column.flatten().to_numpy(zero_copy_only=True)
            out[name] = flat.reshape(len(column), column.type.list_size)
        else:
            out[name] = column.to_numpy(zero_copy_only=True)
    return out


def row_problem(cols: dict[str, np.ndarray], vocab_size: int, seq_len: int) -> tuple[int, str] | None:
    """The first row of `cols` (as from `batch_to_numpy` or `ShardReader.take`) the trainer cannot use.

    Checks token ids < vocab_size, length within 1..seq_len, doc_start (when present) 0 or 1 and 1 at
    each row's first token, and pair_label in {0, 1} (a row whose tokens are all unmaskable is still a
    row: masking is not the reader's business). Returns (row index, problem) or None. Cheap: a few
    whole-array reductions, searched only on failure.
    """
    ids, length = cols["input_ids"], cols["length"]
    if ids.size and int(ids.max()) >= vocab_size:
        r = int(np.flatnonzero((ids >= vocab_size).any(axis=1))[0])
        return r, f"token id {int(ids[r].max())} >= vocab_size {vocab_size}"
    bad = (length < 1) | (length > seq_len)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        return r, f"length {int(length[r])} outside 1..{seq_len}"
    doc_start = cols.get("doc_start")
    if doc_start is not None and doc_start.size and (int(doc_start.max()) > 1 or not doc_start[:, 0].all()):
        bad = (doc_start > 1).any(axis=1) | (doc_start[:, 0] != 1)
        r = int(np.flatnonzero(bad)[0])
        return r, "doc_start is not 0/1 with 1 at the row's first token"
    if "pair_label" in cols and cols["pair_label"].size and int(np.abs(cols["pair_label"]).max()) > 1:
        r = int(np.flatnonzero((cols["pair_label"] != 0) & (cols["pair_label"] != 1))[0])
        return r, f"pair_label {int(cols['pair_label'][r])} is not 0 or 1"
    return None


class ShardReader:
    """Rows of one split of a shards directory by global index, as numpy views of memory-mapped shards.

    `len(reader)`, `reader.seq_len`, `reader.manifest`, `reader.has_pairs`, `reader.has_document_starts`
    (format 2 shards: rows carry `doc_start`); `reader[i]` returns a dict of views (input_ids,
    word_start[, doc_start], length[, segment_b_start, pair_label]); `reader.take(indices)` stacks rows
    and checks them (`row_problem`), so a damaged shard stops training with its name instead of an
    IndexError (or a device-side assert) deep in the model. The tokenizer facts (`vocab_size`,
    `special_ids`, `tokenizer_fingerprint`, `tokenizer_dir`), `data_identity()` and `name` make it the
    trainer's row source (pretrain/data/row_source.py).

    Raises DataError naming the file on a missing or damaged manifest, a missing shard, a size mismatch
    or a record batch whose schema (row width, id type, columns) is not the manifest's.
    """

    def __init__(self, shards_dir: str, split: str = "train") -> None:
        """Load `shards_dir/manifest.json`, check every shard of `split` exists with its listed size and
        the manifest's schema, mmap it."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.manifest = Manifest.load(shards_dir)
        self.shards_dir = shards_dir
        self.split = split
        self.seq_len = self.manifest.seq_len
        self.has_pairs = has_pairs(self.manifest.mode)
        self.has_document_starts = self.manifest.has_doc_start
        self.vocab_size = int(self.manifest.tokenizer["vocab_size"])
        self.special_ids = {name: int(i) for name, i in self.manifest.tokenizer["special_ids"].items()}
        self.tokenizer_fingerprint = str(self.manifest.tokenizer["hash"])
        self.tokenizer_dir = os.path.join(shards_dir, "tokenizer")
        self.name = f"the shards in {shards_dir}"
        schema = shard_schema(self.seq_len, self.manifest.id_dtype, self.has_pairs, self.has_document_starts)
        self._blocks: list[dict[str, np.ndarray]] = []
        self._origin: list[tuple[str, int, str]] = []  # per block: shard path, its first row, shards dir
        starts = []
        total = 0
        for shard in self.manifest.splits[split]["shards"]:
            path = os.path.join(shards_dir, shard["file"])
            problem = size_problem(path, shard["bytes"], "the manifest")
            if problem == "missing":
                raise DataError(f"{path}: shard listed in the manifest is missing; rebuild or restore it")
            if problem is not None:
                raise DataError(
                    f"{path}: {problem}; the shard is truncated or replaced, run `mlm-data verify`"
                )
            in_shard = 0
            for batch in read_shard_batches(path):
                if not batch.schema.equals(schema):  # e.g. rows wider than the manifest's seq_len
                    raise DataError(
                        f"{path}: {schema_mismatch(batch.schema, schema, self.seq_len)}; the manifest "
                        "does not describe this shard: rebuild the shards"
                    )
                starts.append(total)
                self._blocks.append(batch_to_numpy(batch))
                self._origin.append((path, in_shard, shards_dir))
                total += batch.num_rows
                in_shard += batch.num_rows
        self._starts = np.asarray(starts, dtype=np.int64)
        self._len = total

    @classmethod
    def concatenate(cls, readers: Sequence[ShardReader], name: str) -> ShardReader:
        """One reader over the rows of `readers`, one after another (row r of reader i is row
        r + the rows of the readers before it), that reads a batch touching any of them with one `take`
        (a mixture's micro-batch touches all its sources: one take each would cost their fixed overhead
        as many times). For reading only: `manifest` and `shards_dir` are None, the identities are the
        parts'. Raises DataError naming the first reader whose rows do not stack with the first's
        (another seq_len, vocab_size, id type or columns)."""
        first = readers[0]
        joined = cls.__new__(cls)
        joined.__dict__.update(first.__dict__)
        joined.manifest, joined.shards_dir, joined.name = None, None, name
        joined._blocks, joined._origin, starts, total = [], [], [], 0

        def layout(reader: ShardReader) -> tuple:
            return (
                reader.seq_len,
                reader.vocab_size,
                reader.has_pairs,
                reader.has_document_starts,
                reader.manifest.id_dtype,
            )

        for reader in readers:
            if layout(reader) != layout(first):
                raise DataError(
                    f"{reader.name}: its rows (seq_len, vocab_size, pairs, doc_start, id type: "
                    f"{layout(reader)}) do not stack with those of {first.name} ({layout(first)})"
                )
            starts += [total + int(start) for start in reader._starts]
            joined._blocks += reader._blocks
            joined._origin += reader._origin
            total += len(reader)
        joined._starts, joined._len = np.asarray(starts, dtype=np.int64), total
        return joined

    def __len__(self) -> int:
        return self._len

    def data_identity(self) -> str:
        """What the rows are made of (the build identity of the manifest; see Manifest.data_identity)."""
        return self.manifest.data_identity()

    def content_identity(self) -> str:
        """Hex sha256 over the shard checksums the manifest lists, split by split in order: the rows'
        content. Unlike `data_identity` it tells apart a corpus edited keeping its size and rebuilt with
        --overwrite; a merge of K partitions lists its shards in partition order, so re-merging the same
        partitions gives the same value."""
        listing = {
            split: [shard["sha256"] for shard in info["shards"]]
            for split, info in sorted(self.manifest.splits.items())
        }
        canonical = json.dumps(listing, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Row `index` (negative counts from the end) as numpy views; IndexError when out of range."""
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"row {index} out of range for {self._len} {self.split} rows")
        block = int(np.searchsorted(self._starts, index, side="right")) - 1
        local = index - int(self._starts[block])
        return {name: column[local] for name, column in self._blocks[block].items()}

    def column(self, name: str) -> np.ndarray:
        """A one-value-per-row column (`length`, `pair_label`, ...) of every row, in order (a copy; only
        that column's pages of the shards are read). Raises KeyError for an unknown column."""
        if not self._blocks:
            return np.zeros(0, np.int64)
        return np.concatenate([block[name] for block in self._blocks])

    def take(self, indices, epoch: int = 0) -> dict[str, np.ndarray]:
        """Rows at a sequence of global indices stacked into arrays (a copy), in the given order.

        `epoch` (the trainer's sample epoch) does not change a shard set's rows; it is taken so that
        every row source, a mixture whose rows do depend on it included, is read the same way.

        Raises IndexError when the sequence is empty or an index is out of range, and DataError naming
        the shard file and row when a row fails `row_problem`.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise IndexError("take() needs at least one index")
        idx = np.where(idx < 0, idx + self._len, idx)
        if idx.min() < 0 or idx.max() >= self._len:
            raise IndexError(f"indices out of range for {self._len} {self.split} rows")
        blocks = np.searchsorted(self._starts, idx, side="right") - 1
        first = self._blocks[int(blocks[0])]
        out = {name: np.empty((len(idx), *col.shape[1:]), col.dtype) for name, col in first.items()}
        for block in np.unique(blocks):  # one fancy-index gather per memory-mapped record batch
            where = blocks == block
            local = idx[where] - self._starts[block]
            for name, column in self._blocks[int(block)].items():
                out[name][where] = column[local]
        bad = row_problem(out, self.vocab_size, self.seq_len)
        if bad is not None:
            self._raise_bad_row(int(idx[bad[0]]), int(blocks[bad[0]]), bad[1])
        return out

    def _raise_bad_row(self, index: int, block: int, problem: str) -> None:
        path, first, shards_dir = self._origin[block]
        row = first + index - int(self._starts[block])
        raise DataError(
            f"{path}: row {row} ({self.split} sample {index}): {problem}; the shard is damaged or not "
            f"from this build: run `mlm-data verify {shards_dir}` and rebuild"
        )


def schema_mismatch(found: pa.Schema, expected: pa.Schema, seq_len: int) -> str:
    """One line: how a record batch's schema `found` differs from the manifest's `expected` (the reader's
    refusal and `mlm-data verify`'s problem line)."""
    ids = found.field("input_ids").type if "input_ids" in found.names else None
    width = ids.list_size if ids is not None and pa.types.is_fixed_size_list(ids) else None
    if width is not None and width != seq_len:
        return f"rows are {width} tokens wide but the manifest's seq_len is {seq_len}"
    want = expected.field("input_ids").type.value_type
    if width is not None and ids.value_type != want:
        return f"token ids are {ids.value_type} but the manifest's id_dtype is {want}"
    line = lambda schema: "{" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "}"  # noqa: E731
    return f"schema {line(found)} is not the manifest's {line(expected)}"
