"""The worker side of a build: read, clean, split and tokenize one work unit into chunk files.

A worker reads the documents of its unit (`sources.iter_documents`, one block of a big file or a whole
small one), assigns each to train or validation (`is_validation`, keyed by the document's byte offset
in its file, which a worker starting mid-file knows), cleans it and tokenizes it with word starts from
the segmenter for Chinese documents (`segment.WordStartEncoder`). Per CHUNK_CHARS of raw text it writes
`OUT/.work/unit-FFFFFF-PPPPP-CCCCCC.npz` (atomically): full-sentences token streams, SOP rows, or for
NSP the documents' sentences (`nsp_pairs`, paired once every unit is done). Chunks already on disk from
an interrupted run over the same contents are read past without tokenizing them again.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from data_pipeline.build import nsp_pairs, packing, work_units

from data_pipeline.tokenizer import segment
from data_pipeline.ingest.report import BuildReport
from data_pipeline.ingest.clean import Cleaner
from data_pipeline.integrity import atomic_open
from data_pipeline.shards.manifest_schema import has_pairs
from data_pipeline.shards.format import SPLITS
from data_pipeline.ingest.sources import iter_documents
from data_pipeline.build.work_units import WorkUnit, chunk_path

ENCODE_BATCH_CHARS = 1 << 20  # texts per encode_batch call: large enough for the tokenizer's threads
CHUNK_CHARS = 8 << 20  # raw text per result file: bounds a worker's memory whatever the unit's size


def is_validation(relpath: str, offset: int, fraction: float, seed: int) -> bool:
    """The document's split: a hash of (seed, source path relative to the input root, the document's
    byte offset in its file, or row number for Parquet)."""
    digest = hashlib.blake2b(f"{seed}\0{relpath}\0{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


# This process's tokenizer and settings, set once by `init` (the pool's initializer) so that they are
# not pickled with every unit; module-global because a pool task can only reach the worker's module.
_STATE: dict = {}


def init(tokenizer, cfg, root: str, work: str, id_dtype: str, stamp: dict) -> None:
    """Worker initialiser: the build's tokenizer and settings; `stamp["segmenter"]` says whether Chinese
    documents get segmenter word starts (None: the segmenter is not installed)."""
    encoder = segment.WordStartEncoder(tokenizer, segment=stamp["segmenter"] is not None)
    _STATE.update(tokenizer=tokenizer, encoder=encoder, cfg=cfg, root=root, work=work, id_dtype=id_dtype,
                  stamp=stamp)


def process_unit(unit: WorkUnit) -> dict:
    """Read, clean, split and tokenize one work unit, writing a result file per CHUNK_CHARS of raw text;
    returns {"bytes", "documents", "tokens"} for the progress line."""
    cfg, work = _STATE["cfg"], _STATE["work"]
    record = work_units.begin_unit(work, unit, _STATE["stamp"])
    report = BuildReport()  # reset after each chunk: every chunk file carries its own counts
    cleaner = Cleaner(cfg.clean, report)
    rel = os.path.relpath(unit.source.path, _STATE["root"])
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    chunk, chars, totals = 0, 0, {"documents": 0, "tokens": 0}
    skip = os.path.exists(chunk_path(work, unit, chunk))
    documents = iter_documents(
        unit.source, report, text_field=cfg.text_field, one_per_line=cfg.one_per_line, part=unit.part
    )
    for doc in documents:
        chars += len(doc.text)
        if not skip:
            split = (
                "validation" if is_validation(rel, doc.offset, cfg.validation_fraction, cfg.seed) else "train"
            )
            docs[split].extend(cleaner.clean(doc))
        if chars >= CHUNK_CHARS:
            if not skip:
                _write_chunk(unit, chunk, docs, report, totals)
            chunk, chars = chunk + 1, 0
            docs = {s: [] for s in SPLITS}
            report.counts.clear()
            report.examples.clear()
            skip = os.path.exists(chunk_path(work, unit, chunk))
    if not skip:
        _write_chunk(unit, chunk, docs, report, totals)
    work_units.finish_unit(work, unit, chunk + 1, record)
    start, end = unit.block
    return {"bytes": end - start, **totals}


def _write_chunk(unit: WorkUnit, chunk: int, docs: dict[str, list[str]], report: BuildReport, totals) -> None:
    cfg, encoder = _STATE["cfg"], _STATE["encoder"]
    sep = _STATE["tokenizer"].special_ids.sep
    arrays: dict[str, np.ndarray] = {}
    for s, split in enumerate(SPLITS):
        if not has_pairs(cfg.mode):
            encoded = _encode(encoder, docs[split])
            _count_without_content(report, [e[0] for e in encoded], [1] * len(encoded))
            totals["tokens"] += sum(len(e[0]) for e in encoded)
            ids, ws = packing.join_documents(encoded, sep)
            arrays[f"{split}/ids"], arrays[f"{split}/ws"] = ids.astype(_STATE["id_dtype"]), ws
            # Each document's tokens with its [SEP]: where documents start in the stream (8 bytes a
            # document rather than a byte a token).
            arrays[f"{split}/doc_tokens"] = np.fromiter((len(e[0]) + 1 for e in encoded), np.int64, len(encoded))
            continue
        scripts = encoder.document_scripts(docs[split])  # counted once per document
        sentences = [segment.split_sentences(text) for text in docs[split]]
        flat = _encode(
            encoder,
            [x for doc in sentences for x in doc],
            [script for script, doc in zip(scripts, sentences, strict=True) for _ in doc],
        )
        _count_without_content(report, [e[0] for e in flat], [len(doc) for doc in sentences])
        totals["tokens"] += sum(len(e[0]) for e in flat)
        grouped, at = [], 0
        for doc in sentences:
            grouped.append(flat[at : at + len(doc)])
            at += len(doc)
        if cfg.mode == "nsp":  # paired once every unit is done: random-next segments from the whole split
            limit = packing.sentence_limit(cfg.seq_len)
            grouped = [packing.split_long_sentences(doc, limit) for doc in grouped]
            path = nsp_pairs.sentences_path(_STATE["work"], unit, chunk, split)
            nsp_pairs.write_documents(path, grouped, _STATE["id_dtype"])
            arrays[f"{split}/documents"] = np.array(len(grouped), np.int64)
            continue
        rng = np.random.default_rng([cfg.seed, unit.file, unit.part, chunk, s])
        rows = packing.pack_pairs(
            grouped, mode=cfg.mode, seq_len=cfg.seq_len, special_ids=_STATE["tokenizer"].special_ids,
            id_dtype=_STATE["id_dtype"], rng=rng,
        )
        arrays.update({f"{split}/{k}": v for k, v in rows.items()})
    for key, n in encoder.counts.items():  # per chunk, so that a resumed build counts each document once
        report.add(key, n)
    encoder.counts.clear()
    totals["documents"] += report.counts.get("documents", 0)
    arrays["report"] = np.frombuffer(json.dumps(report.to_dict()).encode(), np.uint8)
    path = chunk_path(_STATE["work"], unit, chunk)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def _count_without_content(report: BuildReport, ids: list[np.ndarray], pieces_per_doc: list[int]) -> None:
    """Count into `report` the documents handed to the tokenizer (`tokenized_documents`) and those it
    turned into no token but special ones, [UNK] included (`documents_without_tokens`: a tokenizer
    whose normalizer erases the text). `ids` are the token ids of each piece (the document itself, or
    its sentences), `pieces_per_doc` how many pieces each document has, in order."""
    if not pieces_per_doc:
        return
    specials = np.array(sorted(set(_STATE["tokenizer"].special_ids.to_dict().values())), np.uint32)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate(ids) if len(ids) else np.zeros(0, np.uint32)
    content = np.concatenate([[0], np.cumsum(np.isin(flat, specials, invert=True))])
    doc_ends = np.cumsum(np.asarray([0, *pieces_per_doc], np.int64))  # piece index where each doc ends
    token_ends = np.concatenate([[0], np.cumsum(lengths)])[doc_ends]  # token index where each doc ends
    per_doc = np.diff(content[token_ends])
    report.add("tokenized_documents", len(pieces_per_doc))
    empty = int((per_doc == 0).sum())
    if empty:
        report.add("documents_without_tokens", empty)


def _encode(encoder, texts: list[str], scripts: list | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`encoder.encode_batch` over `texts` in batches of about ENCODE_BATCH_CHARS (with their documents'
    `scripts` when given: NSP/SOP sentences)."""
    out, begin, chars = [], 0, 0
    for end, text in enumerate(texts, 1):
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS or end == len(texts):
            batch_scripts = None if scripts is None else scripts[begin:end]
            out.extend(encoder.encode_batch(texts[begin:end], scripts=batch_scripts))
            begin, chars = end, 0
    return out
