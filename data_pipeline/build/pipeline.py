"""Orchestrate a build: sources -> clean -> tokenize (workers) -> pack -> shards -> manifest.

Work unit = one block of an input file (`file_parts`: a small or compressed file is one block, a big
uncompressed one is cut into 4 MiB blocks, so one big file is tokenized by several workers). Workers
(`build_worker`) tokenize the units into `OUT/.work/` chunk files and mark each unit done with its
input's size, mtime_ns and the sha256 of its block (`work_units`); a rerun after a crash skips finished
units and finished chunks of unchanged inputs. The parent then checks every block still has the sha256
it was read with, pairs NSP documents across the whole build (`nsp_pairs`), packs the chunks in order
into shards (cheap, deterministic) and writes manifest.json last. Output bytes therefore depend neither
on the worker count nor on interruptions, and a changed input is never taken for the same build.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict

import numpy as np

from data_pipeline.build import worker as build_worker

from data_pipeline.ingest import file_parts

from data_pipeline.build import nsp_pairs, packing, work_units

from data_pipeline import parallel

from data_pipeline.tokenizer import segment
from data_pipeline.ingest.report import BuildReport
from data_pipeline.build.settings import BuildConfig
from data_pipeline.errors import DataError
from data_pipeline.ingest.input_files import InputSet, SourceFile, expand_input_set
from data_pipeline.integrity import temp_path, write_json_atomic
from data_pipeline.shards.manifest import MANIFEST_NAME, Manifest
from data_pipeline.shards.manifest_schema import has_pairs
from data_pipeline.tokenizer.segment import describe_segmenter
from data_pipeline.shards.format import SPLITS, ShardSink, id_dtype_for, shard_schema
from data_pipeline.tokenizer.load import LoadedTokenizer, load_tokenizer
from data_pipeline.build.work_units import WorkUnit, chunk_path

log = logging.getLogger(__name__)

WORK_DIR = ".work"
# A build whose tokenizer turns more than this share of the (cleaned, non-empty) documents into nothing
# but special tokens is refused: what it would keep is no longer the corpus (docs/data_pipeline.md).
MAX_WITHOUT_TOKENS_FRACTION = 0.5
IDENTITY_NAME = "build.json"
CHUNK_LAYOUT = 2  # what a work unit's chunk files hold; 2: document lengths for the doc_start column


# ---------------------------------------------------------------------------------------- parent side


def run_build(cfg: BuildConfig) -> dict:
    """Build shards per `cfg` (resuming an interrupted build of the same config); return a summary dict.

    Raises DataError (naming the culprit) on bad inputs, a bad tokenizer, a too-small seq_len, an empty
    corpus, a tokenizer that erases the text (`check_tokenizer_kept_the_text`) or an output dir holding
    a different build (unless cfg.overwrite). No manifest is written unless the build is complete.
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
    chosen = [(i, f) for i, f in enumerate(files) if i % cfg.num_partitions == cfg.partition_index]
    if not chosen:
        raise DataError(
            f"partition {cfg.partition_index} of {cfg.num_partitions} holds no files ({len(files)} inputs); "
            "use fewer partitions"
        )
    units = work_units.make_units(chosen)
    id_dtype = id_dtype_for(tok.vocab_size)
    identity = _identity(cfg, tok, files, root)
    segmenter = segment.segmenter_identity()
    # A unit tokenized with another segmenter, or into chunks of an older layout (before chunks held
    # where documents start, CHUNK_LAYOUT 2), is tokenized again.
    stamp = {"segmenter": segmenter, "chunk_layout": CHUNK_LAYOUT}
    work = _prepare_out(cfg, identity, [f for _, f in chosen], segmenter)
    if work is None:
        log.info("%s already holds this build; nothing to do", cfg.out)
        return {"up_to_date": True, **Manifest.load(cfg.out).counts}
    todo = work_units.units_to_do(work, units, stamp)
    todo.sort(key=lambda u: u.block[0] - u.block[1])  # largest first keeps workers busy to the end
    if len(todo) < len(units):
        log.info("resuming: %d of %d work units already done", len(units) - len(todo), len(units))
    progress = _Progress(sum(u.block[1] - u.block[0] for u in todo))
    for result in parallel.run_units(
        build_worker.process_unit,
        todo,
        workers=cfg.workers,
        init=build_worker.init,
        init_args=(tok, cfg, os.path.abspath(root), work, id_dtype, stamp),
    ):
        progress.update(result)
    progress.close()
    markers = work_units.check_unchanged(work, units, cfg.workers)
    if cfg.mode == "nsp":
        _pair_nsp(cfg, tok, units, work, id_dtype, markers, redo=bool(todo))
    manifest = _pack(cfg, tok, units, work, id_dtype, markers, inputs, segmenter)
    check_tokenizer_kept_the_text(cfg.tokenizer, manifest.counts)
    if manifest.rows == 0:
        raise DataError(
            f"empty corpus: no text left in {' '.join(cfg.inputs)} after cleaning "
            f"(counts: {manifest.counts}); no shards written"
        )
    tok.save_copy(os.path.join(cfg.out, "tokenizer"))
    manifest.save(cfg.out)
    shutil.rmtree(work)
    warning = segment.unsegmented_warning(manifest.counts)
    if warning is not None:
        log.warning("%s", warning)
    seconds = time.monotonic() - started
    return _summary(manifest, seconds)


def check_tokenizer_kept_the_text(tokenizer: str, counts: dict) -> None:
    """Raise DataError naming `tokenizer` when more than MAX_WITHOUT_TOKENS_FRACTION of the documents it
    was given (`tokenized_documents`, after cleaning) became no token but special ones
    (`documents_without_tokens`): a tokenizer whose normalizer maps the text to nothing would otherwise
    build "successfully" into rows of [CLS] and [SEP]."""
    given, erased = counts.get("tokenized_documents", 0), counts.get("documents_without_tokens", 0)
    if given and erased > MAX_WITHOUT_TOKENS_FRACTION * given:
        raise DataError(
            f"the tokenizer {tokenizer} erases the text: {erased} of the {given} documents it was given "
            f"({100 * erased / given:.0f}%) became no token but special ones ([UNK] included), and a build "
            f"refuses more than {100 * MAX_WITHOUT_TOKENS_FRACTION:g}%; check its normalizer and "
            "pre-tokenizer on a sample (or choose another tokenizer); no manifest written"
        )


def _pair_nsp(cfg: BuildConfig, tok, units: list[WorkUnit], work: str, id_dtype: str, markers, redo: bool):
    """The second pass of an NSP build: pair every chunk's documents, random-next segments drawn from
    every document of the split (of this partition)."""
    tasks = nsp_pairs.chunks_to_pair(work, units, markers, redo)
    index = nsp_pairs.corpus_index(work, units, markers)
    try:
        for _ in parallel.run_units(
            nsp_pairs.pair_chunk,
            tasks,
            workers=cfg.workers,
            init=nsp_pairs.init_pairing,
            init_args=(work, index, cfg.seed, cfg.seq_len, tok.special_ids, id_dtype),
        ):
            pass
    finally:
        nsp_pairs.close_pairing()


def _identity(cfg: BuildConfig, tok: LoadedTokenizer, files: list[SourceFile], root: str) -> dict:
    settings = asdict(cfg)
    # Not what the data is made of: where it goes, how fast, and how strict the skip check is.
    for key in ("inputs", "tokenizer", "out", "workers", "overwrite", "max_skipped_fraction"):
        settings.pop(key)
    settings.pop("accept_skipped")
    if not settings["extensions"]:
        settings.pop("extensions")  # builds without --ext keep the identity they had before it existed
    # How the data is cut and keyed: a build of an earlier scheme (validation keyed by record index, NSP
    # negatives from the same file) is another build.
    scheme = {"validation_key": "offset", "nsp_negatives": "corpus", **file_parts.scheme()}
    return {
        "settings": settings,
        "scheme": scheme,
        "tokenizer": tok.fingerprint,
        "files": [[os.path.relpath(f.path, root), f.size] for f in files],
    }


def _without_segmenter(identity: dict | None) -> dict | None:
    """A finished build's identity as it was before the build (the segmenter joins it at the end)."""
    if identity is None:
        return None
    return {k: v for k, v in identity.items() if k != "segmenter"}


def _prepare_out(cfg: BuildConfig, identity: dict, files: list[SourceFile], segmenter) -> str | None:
    """Create/validate the output dir; return the work dir, or None when the same build is complete
    (same identity, every input of `files` has the contents it was built from, and the same word
    segmentation)."""
    out, work = cfg.out, os.path.join(cfg.out, WORK_DIR)
    id_path = os.path.join(work, IDENTITY_NAME)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out):
        previous = _without_segmenter(_previous_identity(out, id_path))
        finished = os.path.exists(os.path.join(out, MANIFEST_NAME))
        what = None
        if previous is None:
            what = "files that are not from this build"
        elif previous != identity:
            what = "a different build" + _identity_change(previous, identity)
        elif finished:
            manifest = Manifest.load(out)
            changed = work_units.changed_input(manifest.sources, files)
            what = _segmenter_change(manifest, segmenter)
            if changed is not None:
                what = f"a build of other inputs ({changed})"
            if what is None and not cfg.overwrite:
                return None
        if cfg.overwrite:
            _clear(out)
        elif what is not None:
            raise DataError(
                f"output dir {out} holds {what}; choose another --out or pass --overwrite to replace it"
            )
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(id_path):
        write_json_atomic(id_path, identity, sort_keys=True)
    return work


def _segmenter_change(manifest: Manifest, segmenter: dict | None) -> str | None:
    """What differs between a finished build's word segmentation and what this run would do, or None."""
    used = (manifest.build.get("identity") or {}).get("segmenter")
    if used is not None and used != segmenter:
        now = describe_segmenter(segmenter) if segmenter else "none is installed"
        return f"a build whose Chinese documents were segmented by {describe_segmenter(used)} ({now} now)"
    unsegmented = manifest.counts.get("unsegmented_chinese_documents", 0)
    if used is None and unsegmented and segmenter is not None:
        return (
            f"a build whose {unsegmented} Chinese documents were not word-segmented (the segmenter "
            f"{describe_segmenter(segmenter)} is installed now)"
        )
    return None


def _identity_change(previous: dict, identity: dict) -> str:
    """' (what differs)' between two build identities, for the refusal line; '' when nothing shows."""
    old_settings, new_settings = previous.get("settings") or {}, identity["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            return f" (its {key} is {old_settings.get(key)!r}, now {new_settings.get(key)!r})"
    if previous.get("scheme") != identity["scheme"]:
        return " (made by another version of mlm-data, which cut or keyed the data differently)"
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
        if name in (MANIFEST_NAME, "tokenizer", WORK_DIR) or name.endswith((".arrow", temp_path(".arrow"))):
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
    cfg: BuildConfig, tok: LoadedTokenizer, units: list[WorkUnit], work: str, id_dtype: str, markers,
    inputs: InputSet, segmenter: dict | None,
) -> Manifest:
    pairs = has_pairs(cfg.mode)
    schema = shard_schema(cfg.seq_len, id_dtype, pairs)
    rows_suffix = nsp_pairs.PAIRS_SUFFIX if cfg.mode == "nsp" else ".npz"
    report = BuildReport()
    splits = {}
    for split in SPLITS:
        sink = ShardSink(cfg.out, split, schema, cfg.rows_per_shard)
        packer = packing.FullSentencePacker(cfg.seq_len, tok.special_ids.cls, tok.special_ids.pad, id_dtype)
        for unit, marker in zip(units, markers, strict=True):
            for chunk in range(marker["chunks"]):
                if split == SPLITS[0]:
                    with np.load(chunk_path(work, unit, chunk)) as data:
                        report.merge(BuildReport.from_dict(json.loads(data["report"].tobytes())))
                with np.load(chunk_path(work, unit, chunk, rows_suffix)) as data:
                    if pairs:
                        sink.write({k: data[f"{split}/{k}"] for k in schema.names})
                    else:
                        ids, ws = data[f"{split}/ids"].astype(np.uint32), data[f"{split}/ws"]
                        ds = packing.document_starts(data[f"{split}/doc_tokens"])
                        sink.write(packer.feed(ids, ws, ds))
        if not pairs:
            sink.write(packer.finish())
        splits[split] = sink.finish()
    identity = _previous_identity(cfg.out, os.path.join(work, IDENTITY_NAME))
    counts = report.to_dict()["counts"]
    if counts.get("segmented_documents"):  # only then do the segmenter's words shape the data
        identity = {**identity, "segmenter": segmenter}
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
        sources=work_units.source_records(units, markers),
        counts=counts,
        build={"validation_fraction": cfg.validation_fraction, "seed": cfg.seed, "partition": partition,
               "clean_examples": report.examples, "identity": identity,
               "skipped": inputs.skipped_summary()},
    )


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
