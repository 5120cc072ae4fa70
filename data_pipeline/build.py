"""Orchestrate a build: sources -> clean -> tokenize (workers) -> pack -> shards -> manifest.

Work unit = one input file (index in the sorted file list). A worker hashes, reads, cleans, splits and
tokenizes its file and writes one `OUT/.work/unit-NNNNNN-CCCCCC.npz` per 8 MiB of raw text (atomically),
then a `unit-NNNNNN.done` marker holding the input's size, mtime_ns and sha256 (`work_units`); a rerun
after a crash skips finished files and finished chunks of unchanged inputs. The parent then checks every
input still has the sha256 it was read with, packs the chunks in order into shards (cheap,
deterministic) and writes manifest.json last. Output bytes therefore depend neither on the worker count
nor on interruptions, and a changed input is never taken for the same build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from data_pipeline import packing, parallel, work_units
from data_pipeline.clean import CleanConfig, Cleaner, CleanReport
from data_pipeline.errors import DataError
from data_pipeline.input_files import DEFAULT_MAX_SKIPPED_FRACTION, InputSet, SourceFile, expand_input_set
from data_pipeline.manifest import MANIFEST_NAME, Manifest
from data_pipeline.shards import SPLITS, ShardSink, id_dtype_for, shard_schema
from data_pipeline.sources import iter_documents
from data_pipeline.tokenizer import LoadedTokenizer, load_tokenizer
from data_pipeline.work_units import chunk_path

log = logging.getLogger(__name__)

WORK_DIR = ".work"
IDENTITY_NAME = "build.json"
ENCODE_BATCH_CHARS = 1 << 20  # texts per encode_batch call: large enough for the tokenizer's threads
CHUNK_CHARS = 8 << 20  # raw text per result file: bounds a worker's memory whatever the file size
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*\n\s*")


@dataclass
class BuildConfig:
    """Everything `mlm-data build` takes (see `mlm-data build --help`)."""

    inputs: list[str]
    tokenizer: str
    out: str
    seq_len: int = 128
    mode: str = "full-sentences"
    workers: int = 1
    validation_fraction: float = 0.01
    seed: int = 0
    rows_per_shard: int = 100_000
    text_field: str = "text"
    one_per_line: bool = False
    clean: CleanConfig = field(default_factory=CleanConfig)
    num_partitions: int = 1
    partition_index: int = 0
    overwrite: bool = False
    extensions: dict[str, str] = field(default_factory=dict)  # --ext: more extensions -> format
    max_skipped_fraction: float = DEFAULT_MAX_SKIPPED_FRACTION  # of input bytes, unknown extensions
    accept_skipped: bool = False


def split_sentences(text: str) -> list[str]:
    """Cut after '.', '!' or '?' (plus closing quotes/brackets) followed by whitespace, and at blank lines."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()].strip()
        if piece:
            out.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def is_validation(relpath: str, index: int, fraction: float, seed: int) -> bool:
    """The document's split: a hash of (seed, source path relative to the input root, record index)."""
    digest = hashlib.blake2b(f"{seed}\0{relpath}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


# ---------------------------------------------------------------------------------------- worker side

_STATE: dict = {}


def _init(tokenizer: LoadedTokenizer, cfg: BuildConfig, root: str, work: str, id_dtype: str) -> None:
    _STATE.update(tokenizer=tokenizer, cfg=cfg, root=root, work=work, id_dtype=id_dtype)


def _process_unit(unit: tuple[int, SourceFile]) -> dict:
    """Read, clean, split and tokenize one input file, writing a result file per CHUNK_CHARS of raw text.

    Chunks already on disk (from an interrupted run over the same contents) are read past without
    tokenizing them again.
    """
    index, source = unit
    cfg, work = _STATE["cfg"], _STATE["work"]
    record = work_units.begin_unit(work, index, source)
    report = CleanReport()  # reset after each chunk: every chunk file carries its own counts
    cleaner = Cleaner(cfg.clean, report)
    rel = os.path.relpath(source.path, _STATE["root"])
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    chunk, chars, totals = 0, 0, {"documents": 0, "tokens": 0}
    skip = os.path.exists(chunk_path(work, index, chunk))
    for doc in iter_documents(source, report, text_field=cfg.text_field, one_per_line=cfg.one_per_line):
        chars += len(doc.text)
        if not skip:
            split = (
                "validation" if is_validation(rel, doc.index, cfg.validation_fraction, cfg.seed) else "train"
            )
            docs[split].extend(cleaner.clean(doc))
        if chars >= CHUNK_CHARS:
            if not skip:
                _write_chunk(index, chunk, docs, report, totals)
            chunk, chars = chunk + 1, 0
            docs = {s: [] for s in SPLITS}
            report.counts.clear()
            report.examples.clear()
            skip = os.path.exists(chunk_path(work, index, chunk))
    if not skip:
        _write_chunk(index, chunk, docs, report, totals)
    work_units.finish_unit(work, index, source, chunk + 1, record)
    return {"index": index, "bytes": source.size, **totals}


def _write_chunk(
    index: int, chunk: int, docs: dict[str, list[str]], report: CleanReport, totals: dict
) -> None:
    cfg, tok = _STATE["cfg"], _STATE["tokenizer"]
    arrays: dict[str, np.ndarray] = {}
    for s, split in enumerate(SPLITS):
        if cfg.mode == "full-sentences":
            encoded = _encode(tok, docs[split])
            totals["tokens"] += sum(len(e[0]) for e in encoded)
            ids, ws = packing.join_documents(encoded, tok.special_ids.sep)
            arrays[f"{split}/ids"], arrays[f"{split}/ws"] = ids.astype(_STATE["id_dtype"]), ws
        else:
            sentences = [split_sentences(text) for text in docs[split]]
            flat = _encode(tok, [x for doc in sentences for x in doc])
            grouped, at = [], 0
            for doc in sentences:
                grouped.append(flat[at : at + len(doc)])
                at += len(doc)
            totals["tokens"] += sum(len(e[0]) for e in flat)
            rng = np.random.default_rng([cfg.seed, index, chunk, s])
            rows = packing.pack_pairs(
                grouped, mode=cfg.mode, seq_len=cfg.seq_len, special_ids=tok.special_ids,
                id_dtype=_STATE["id_dtype"], rng=rng,
            )  # fmt: skip
            arrays.update({f"{split}/{k}": v for k, v in rows.items()})
    totals["documents"] += report.counts.get("documents", 0)
    arrays["report"] = np.frombuffer(json.dumps(report.to_dict()).encode(), np.uint8)
    path = chunk_path(_STATE["work"], index, chunk)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _encode(tok: LoadedTokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    out, batch, chars = [], [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS:
            out.extend(tok.encode_batch(batch))
            batch, chars = [], 0
    if batch:
        out.extend(tok.encode_batch(batch))
    return out


# ---------------------------------------------------------------------------------------- parent side


def run_build(cfg: BuildConfig) -> dict:
    """Build shards per `cfg` (resuming an interrupted build of the same config); return a summary dict.

    Raises DataError (naming the culprit) on bad inputs, a bad tokenizer, a too-small seq_len, an empty
    corpus or an output dir holding a different build (unless cfg.overwrite). No manifest is written
    unless the build is complete.
    """
    started = time.monotonic()
    packing.check_seq_len(cfg.seq_len, cfg.mode)
    if not 0 <= cfg.validation_fraction < 1:
        raise DataError(f"--validation-fraction must be in [0, 1), got {cfg.validation_fraction}")
    if not 0 <= cfg.partition_index < cfg.num_partitions:
        raise DataError(f"--partition-index {cfg.partition_index} not in 0..{cfg.num_partitions - 1}")
    tok = load_tokenizer(cfg.tokenizer)
    inputs = expand_input_set(cfg.inputs, cfg.extensions)
    if not cfg.accept_skipped:
        inputs.check_skipped(cfg.max_skipped_fraction)
    files = sorted(inputs.files, key=lambda f: f.path)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(f.path)) for f in files])
    units = [(i, f) for i, f in enumerate(files) if i % cfg.num_partitions == cfg.partition_index]
    if not units:
        raise DataError(
            f"partition {cfg.partition_index} of {cfg.num_partitions} holds no files ({len(files)} inputs); "
            "use fewer partitions"
        )
    id_dtype = id_dtype_for(tok.vocab_size)
    identity = _identity(cfg, tok, files, root)
    work = _prepare_out(cfg, identity, units)
    if work is None:
        log.info("%s already holds this build; nothing to do", cfg.out)
        return {"up_to_date": True, **Manifest.load(cfg.out).counts}
    todo = work_units.units_to_do(work, units)
    todo.sort(key=lambda u: -u[1].size)  # largest first keeps workers busy to the end; order is free
    if len(todo) < len(units):
        log.info("resuming: %d of %d work units already done", len(units) - len(todo), len(units))
    progress = _Progress(sum(f.size for _, f in todo))
    for result in parallel.run_units(
        _process_unit,
        todo,
        workers=cfg.workers,
        init=_init,
        init_args=(tok, cfg, os.path.abspath(root), work, id_dtype),
    ):
        progress.update(result)
    progress.close()
    markers = work_units.check_unchanged(work, units, cfg.workers)
    manifest = _pack(cfg, tok, units, work, id_dtype, markers, inputs)
    if manifest.rows == 0:
        raise DataError(
            f"empty corpus: no text left in {' '.join(cfg.inputs)} after cleaning "
            f"(counts: {manifest.counts}); no shards written"
        )
    tok.save_copy(os.path.join(cfg.out, "tokenizer"))
    manifest.save(cfg.out)
    shutil.rmtree(work)
    seconds = time.monotonic() - started
    return _summary(manifest, seconds)


def _identity(cfg: BuildConfig, tok: LoadedTokenizer, files: list[SourceFile], root: str) -> dict:
    settings = asdict(cfg)
    # Not what the data is made of: where it goes, how fast, and how strict the skip check is.
    for key in ("inputs", "tokenizer", "out", "workers", "overwrite", "max_skipped_fraction"):
        settings.pop(key)
    settings.pop("accept_skipped")
    if not settings["extensions"]:
        settings.pop("extensions")  # builds without --ext keep the identity they had before it existed
    return {
        "settings": settings,
        "tokenizer": tok.fingerprint,
        "files": [[os.path.relpath(f.path, root), f.size] for f in files],
    }


def _prepare_out(cfg: BuildConfig, identity: dict, units) -> str | None:
    """Create/validate the output dir; return the work dir, or None when the same build is complete
    (same identity, and every input of `units` has the contents it was built from)."""
    out, work = cfg.out, os.path.join(cfg.out, WORK_DIR)
    id_path = os.path.join(work, IDENTITY_NAME)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out):
        previous = _previous_identity(out, id_path)
        finished = os.path.exists(os.path.join(out, MANIFEST_NAME))
        changed = None
        if previous == identity and finished and not cfg.overwrite:
            changed = work_units.changed_input(Manifest.load(out).sources, units)
            if changed is None:
                return None
        if cfg.overwrite:
            _clear(out)
        elif previous != identity or changed is not None:
            if changed is not None:
                what = f"a build of other inputs ({changed})"
            elif previous is not None:
                what = "a different build" + _identity_change(previous, identity)
            else:
                what = "files that are not from this build"
            raise DataError(
                f"output dir {out} holds {what}; choose another --out or pass --overwrite to replace it"
            )
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(id_path):
        with open(id_path + ".tmp", "w") as f:
            json.dump(identity, f, sort_keys=True)
        os.replace(id_path + ".tmp", id_path)
    return work


def _identity_change(previous: dict, identity: dict) -> str:
    """' (what differs)' between two build identities, for the refusal line; '' when nothing shows."""
    old_settings, new_settings = previous.get("settings") or {}, identity["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            return f" (its {key} is {old_settings.get(key)!r}, now {new_settings.get(key)!r})"
    if previous.get("tokenizer") != identity["tokenizer"]:
        return " (made with another tokenizer)"
    old_files = {path: size for path, size in previous.get("files") or []}
    for path, size in identity["files"]:
        if path not in old_files:
            return f" (without the input {path})"
        if old_files[path] != size:
            return f" (its input {path} had {old_files[path]} bytes, now {size})"
    return " (with other input files)"


def _previous_identity(out: str, id_path: str) -> dict | None:
    path = id_path if os.path.exists(id_path) else os.path.join(out, MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: treated as foreign files, replaced only with --overwrite
    if not isinstance(data, dict):
        return None
    return data.get("build", {}).get("identity") if path.endswith(MANIFEST_NAME) else data


def _clear(out: str) -> None:
    """Remove what a build writes (manifest first, so nothing looks complete meanwhile)."""
    for name in [MANIFEST_NAME, *sorted(os.listdir(out))]:
        path = os.path.join(out, name)
        if name in (MANIFEST_NAME, "tokenizer", WORK_DIR) or name.endswith((".arrow", ".arrow.tmp")):
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)


class _Progress:
    """tqdm over input bytes when stderr is a terminal, else a log line every 10 s."""

    def __init__(self, total_bytes: int) -> None:
        self.docs = self.tokens = self.done = 0
        self.total = total_bytes
        self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize")

    def update(self, result: dict) -> None:
        self.docs += result["documents"]
        self.tokens += result["tokens"]
        self.done += result["bytes"]
        if self.bar is not None:
            self.bar.set_postfix(docs=self.docs, tokens=self.tokens, refresh=False)
            self.bar.update(result["bytes"])
        elif time.monotonic() - self.last > 10:
            self.last = time.monotonic()
            log.info("%d/%d bytes, %d docs, %d tokens", self.done, self.total, self.docs, self.tokens)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pack(
    cfg: BuildConfig, tok: LoadedTokenizer, units, work: str, id_dtype: str, markers, inputs: InputSet
) -> Manifest:
    pairs = cfg.mode != "full-sentences"
    schema = shard_schema(cfg.seq_len, id_dtype, pairs)
    report = CleanReport()
    splits = {}
    for split in SPLITS:
        sink = ShardSink(cfg.out, split, schema, cfg.rows_per_shard)
        packer = packing.FullSentencePacker(cfg.seq_len, tok.special_ids.cls, tok.special_ids.pad, id_dtype)
        for (index, _), marker in zip(units, markers, strict=True):
            for chunk in range(marker["chunks"]):
                with np.load(chunk_path(work, index, chunk)) as data:
                    if split == SPLITS[0]:
                        report.merge(CleanReport.from_dict(json.loads(data["report"].tobytes())))
                    if pairs:
                        sink.write({k: data[f"{split}/{k}"] for k in schema.names})
                    else:
                        sink.write(packer.feed(data[f"{split}/ids"].astype(np.uint32), data[f"{split}/ws"]))
        if not pairs:
            sink.write(packer.finish())
        splits[split] = sink.finish()
    identity = _previous_identity(cfg.out, os.path.join(work, IDENTITY_NAME))
    partition = (
        None if cfg.num_partitions == 1 else {"index": cfg.partition_index, "count": cfg.num_partitions}
    )
    return Manifest(
        seq_len=cfg.seq_len,
        mode=cfg.mode,
        id_dtype=id_dtype,
        tokenizer={"dir": "tokenizer", "hash": tok.fingerprint, "vocab_size": tok.vocab_size,
                   "special_ids": tok.special_ids.to_dict()},
        splits=splits,
        sources=[work_units.source_record(f, m) for (_, f), m in zip(units, markers, strict=True)],
        counts=report.to_dict()["counts"],
        build={"validation_fraction": cfg.validation_fraction, "seed": cfg.seed, "partition": partition,
               "clean_examples": report.examples, "identity": identity,
               "skipped": inputs.skipped_summary()},
    )  # fmt: skip


def _summary(manifest: Manifest, seconds: float) -> dict:
    rows, tokens = manifest.rows, manifest.tokens
    return {
        "documents": manifest.counts.get("documents", 0),
        "tokens": tokens,
        "sequences": rows,
        "fill_ratio": tokens / max(1, rows * manifest.seq_len),
        "counts": manifest.counts,
        "skipped": manifest.build["skipped"],
        "seconds": seconds,
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
