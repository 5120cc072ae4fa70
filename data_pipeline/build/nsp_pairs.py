"""NSP pairs whose random-next segments come from any document of the build (as BERT's
create_pretraining_data does), with bounded memory.

An NSP build runs in two passes. The workers first tokenize every work unit and write, per chunk and
split, the chunk's documents as a *sentence file* (`write_documents`): its sentences' tokens and where
each document and sentence starts. Once every unit is done (and its input checked unchanged), the
documents of a split, over all units in order, are numbered 0..N-1 (`corpus_index`), and the workers
pair each chunk's documents (`pair_chunk`): a random-next segment is read from the sentence file of a
random other document of the split anywhere in the build (`CorpusDocuments`, a few small `pread`s), or
in the partition for a partitioned build. The numbering depends only on the inputs and each chunk's
generator on (seed, unit, chunk, split), so the pairs are the same for any worker count, and a chunk
whose pairs are on disk is not paired again on resume.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from data_pipeline.build import packing
from data_pipeline.integrity import atomic_open
from data_pipeline.shards.format import SPLITS
from data_pipeline.build.work_units import WorkUnit, chunk_path

PAIRS_SUFFIX = ".pairs.npz"
_MAGIC = b"MLMSENT1"
_HEADER = len(_MAGIC) + 4 * 8  # magic, then documents, sentences, tokens, id item size (int64 each)
_OPEN_FILES = 64  # sentence files a worker keeps open while drawing random-next segments

Sentence = packing.Sentence


def sentences_path(work: str, unit: WorkUnit, chunk: int, split: str) -> str:
    """The sentence file of one chunk and split."""
    return chunk_path(work, unit, chunk, f".{split}.sentences")


def write_documents(path: str, documents: list[list[Sentence]], id_dtype: str) -> None:
    """Write `documents` (lists of (ids, word_start) sentences) to `path` atomically (temp, fsync,
    rename): header, document -> first sentence, sentence -> first token (int64), ids, word starts."""
    sentences = [s for doc in documents for s in doc]
    doc_starts = np.zeros(len(documents) + 1, np.int64)
    np.cumsum([len(doc) for doc in documents], out=doc_starts[1:])
    token_starts = np.zeros(len(sentences) + 1, np.int64)
    np.cumsum([len(s[0]) for s in sentences], out=token_starts[1:])
    dtype = np.dtype(id_dtype)
    ids = np.concatenate([s[0] for s in sentences]).astype(dtype) if sentences else np.zeros(0, dtype)
    ws = np.concatenate([s[1] for s in sentences]).astype(np.uint8) if sentences else np.zeros(0, np.uint8)
    header = np.array([len(documents), len(sentences), len(ids), dtype.itemsize], "<i8")
    with atomic_open(path) as f:
        for part in (_MAGIC, header, doc_starts.astype("<i8"), token_starts.astype("<i8"), ids, ws):
            f.write(memoryview(part).cast("B") if isinstance(part, np.ndarray) else part)


def read_documents(path: str) -> list[list[Sentence]]:
    """The documents `write_documents` wrote to `path` (views of one read of the file)."""
    with open(path, "rb") as f:
        data = f.read()
    n_docs, n_sentences, n_tokens, itemsize = (int(x) for x in np.frombuffer(data, "<i8", 4, len(_MAGIC)))
    at = _HEADER
    doc_starts = np.frombuffer(data, "<i8", n_docs + 1, at)
    at += 8 * (n_docs + 1)
    token_starts = np.frombuffer(data, "<i8", n_sentences + 1, at)
    at += 8 * (n_sentences + 1)
    ids = np.frombuffer(data, f"<u{itemsize}", n_tokens, at)
    ws = np.frombuffer(data, np.uint8, n_tokens, at + itemsize * n_tokens)
    bounds = token_starts.tolist()
    sentences = [(ids[bounds[k] : bounds[k + 1]], ws[bounds[k] : bounds[k + 1]]) for k in range(n_sentences)]
    starts = doc_starts.tolist()
    return [sentences[starts[d] : starts[d + 1]] for d in range(n_docs)]


class CorpusDocuments:
    """A `packing.DocumentPool` over the documents of one split of a build, read from the chunks'
    sentence files by random access (a few `pread`s per document drawn; at most _OPEN_FILES open)."""

    def __init__(self, paths: list[str], counts: list[int]) -> None:
        """`paths[k]` holds `counts[k]` documents; documents are numbered across the files in order."""
        self.paths = paths
        self.starts = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self.count = int(self.starts[-1])
        self._files: OrderedDict[int, tuple[int, tuple[int, ...]]] = OrderedDict()
        self._last: tuple[int, int, int, int] | None = None  # doc, file, first sentence, sentences

    def sentence_count(self, doc: int) -> int:
        """Sentences of document `doc`."""
        return self._locate(doc)[3]

    def tokens(self, doc: int, sentence: int, limit: int) -> Sentence:
        """The first `limit` tokens of document `doc` from its sentence `sentence` on."""
        _, k, first, count = self._locate(doc)
        fd, (n_docs, n_sentences, n_tokens, itemsize) = self._open(k)
        sentence_table = _HEADER + 8 * (n_docs + 1)
        begin = self._int64(fd, sentence_table + 8 * (first + sentence))
        end = self._int64(fd, sentence_table + 8 * (first + count))
        n = min(limit, end - begin)
        ids_at = sentence_table + 8 * (n_sentences + 1)
        ids = np.frombuffer(os.pread(fd, n * itemsize, ids_at + itemsize * begin), f"<u{itemsize}")
        ws = np.frombuffer(os.pread(fd, n, ids_at + itemsize * n_tokens + begin), np.uint8)
        return ids.astype(np.uint32), ws

    def close(self) -> None:
        """Close the open sentence files."""
        while self._files:
            os.close(self._files.popitem()[1][0])

    def _locate(self, doc: int) -> tuple[int, int, int, int]:
        if self._last is None or self._last[0] != doc:
            k = int(np.searchsorted(self.starts, doc, side="right")) - 1
            fd, _ = self._open(k)
            local = doc - int(self.starts[k])
            first, after = np.frombuffer(os.pread(fd, 16, _HEADER + 8 * local), "<i8").tolist()
            self._last = (doc, k, first, after - first)
        return self._last

    def _open(self, k: int) -> tuple[int, tuple[int, ...]]:
        if k in self._files:
            self._files.move_to_end(k)
            return self._files[k]
        if len(self._files) >= _OPEN_FILES:
            os.close(self._files.popitem(last=False)[1][0])
        fd = os.open(self.paths[k], os.O_RDONLY)
        header = tuple(int(x) for x in np.frombuffer(os.pread(fd, _HEADER, 0)[len(_MAGIC) :], "<i8"))
        self._files[k] = (fd, header)
        return self._files[k]

    @staticmethod
    def _int64(fd: int, at: int) -> int:
        return int(np.frombuffer(os.pread(fd, 8, at), "<i8")[0])


def corpus_index(work: str, units: list[WorkUnit], markers: list[dict]) -> dict[str, tuple[list, list]]:
    """Per split: (sentence file paths, documents in each), over every chunk of `units` in order."""
    index: dict[str, tuple[list, list]] = {split: ([], []) for split in SPLITS}
    for unit, marker in zip(units, markers, strict=True):
        for chunk in range(marker["chunks"]):
            with np.load(chunk_path(work, unit, chunk)) as data:
                for split in SPLITS:
                    index[split][0].append(sentences_path(work, unit, chunk, split))
                    index[split][1].append(int(data[f"{split}/documents"]))
    return index


# This process's corpus index and packing settings, set once by `init_pairing` (the pool's initializer)
# so that they are not pickled with every chunk; module-global because a pool task can only reach them so.
_STATE: dict = {}


def init_pairing(work: str, index: dict, seed: int, seq_len: int, special_ids, id_dtype: str) -> None:
    """Worker initialiser for `pair_chunk`: the corpus index and the packing settings."""
    pools = {split: CorpusDocuments(*index[split]) for split in SPLITS}
    starts = {  # each sentence file's first document number
        split: dict(zip(index[split][0], pools[split].starts[:-1].tolist(), strict=True)) for split in SPLITS
    }
    _STATE.update(work=work, pools=pools, starts=starts, seed=seed, seq_len=seq_len,
                  special_ids=special_ids, id_dtype=id_dtype)


def close_pairing() -> None:
    """Close the sentence files `init_pairing` opened in this process (a build with one worker pairs in
    the parent process; worker processes close theirs when they exit)."""
    for pool in _STATE.pop("pools", {}).values():
        pool.close()


def pair_chunk(task: tuple[WorkUnit, int]) -> None:
    """Pair the documents of one chunk into NSP rows (random-next segments from the whole split) and
    write them to the chunk's pairs file (temp, fsync, rename)."""
    unit, chunk = task
    arrays: dict[str, np.ndarray] = {}
    for s, split in enumerate(SPLITS):
        path = sentences_path(_STATE["work"], unit, chunk, split)
        rows = packing.pack_pairs(
            read_documents(path), mode="nsp", seq_len=_STATE["seq_len"], special_ids=_STATE["special_ids"],
            id_dtype=_STATE["id_dtype"], rng=np.random.default_rng([_STATE["seed"], unit.file, unit.part,
            chunk, s]), pool=_STATE["pools"][split], first_doc=_STATE["starts"][split][path],
        )
        arrays.update({f"{split}/{k}": v for k, v in rows.items()})
    path = chunk_path(_STATE["work"], unit, chunk, PAIRS_SUFFIX)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def chunks_to_pair(work: str, units: list[WorkUnit], markers: list[dict], redo: bool) -> list:
    """The (unit, chunk) tasks whose pairs file is missing; with `redo` (a unit was tokenized again,
    so the numbering may have changed) every pairs file is removed first and all are to do."""
    tasks = []
    for unit, marker in zip(units, markers, strict=True):
        for chunk in range(marker["chunks"]):
            path = chunk_path(work, unit, chunk, PAIRS_SUFFIX)
            if redo and os.path.exists(path):
                os.remove(path)
            if not os.path.exists(path):
                tasks.append((unit, chunk))
    return tasks
