"""`mlm-data verify`: every shard of a shards directory checked against its manifest (size, sha256, Arrow
validity, schema, token id range, lengths, document starts, row and token counts) and the manifest against
its build (every input file once). Next to the shard reader rather than in `manifest.py`, which it needs
both of: the manifest stays a leaf."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.integrity import file_sha256, size_problem
from data_pipeline.shards.format import (
    batch_to_numpy,
    read_shard_batches,
    row_problem,
    schema_mismatch,
    shard_schema,
)
from data_pipeline.shards.manifest import MANIFEST_NAME, Manifest
from data_pipeline.shards.manifest_schema import has_pairs
from data_pipeline.shards.tokenizer_match import shards_tokenizer_problem


def verify_shards(shards_dir: str) -> list[str]:
    """Check every shard against the manifest (size, sha256, Arrow validity, schema, id range, lengths),
    that the manifest covers its whole build (`coverage_problem`) and that its tokenizer dir is the one
    it describes (`shards_tokenizer_problem`: fingerprint, vocab_size, special ids).

    Returns one problem string per bad shard (naming the file), [] when all is well.
    Raises DataError when the manifest itself is missing or unreadable.
    """
    manifest = Manifest.load(shards_dir)
    schema = shard_schema(
        manifest.seq_len, manifest.id_dtype, has_pairs(manifest.mode), manifest.has_doc_start
    )
    vocab_size = int(manifest.tokenizer["vocab_size"])
    problems = []
    for split in manifest.splits.values():
        for shard in split["shards"]:
            path = os.path.join(shards_dir, shard["file"])
            problem = _check_shard(path, shard)
            if problem is None:
                try:
                    batches = read_shard_batches(path)
                    problem = _check_rows(batches, schema, shard, vocab_size, manifest.seq_len)
                except DataError as exc:
                    problem = str(exc)
            if problem is not None:
                problems.append(f"{path}: {problem}" if not problem.startswith(path) else problem)
    manifest_path = os.path.join(shards_dir, MANIFEST_NAME)
    coverage = coverage_problem(manifest)
    if coverage is not None:
        problems.append(f"{manifest_path}: {coverage}")
    tokenizer = shards_tokenizer_problem(shards_dir, manifest)
    if tokenizer is not None:
        problems.append(f"{manifest_path}: {tokenizer}")
    return problems


def coverage_problem(manifest: Manifest) -> str | None:
    """Why the manifest's `sources` are not all the input files of its build (or of its partition),
    each once, or None. Catches a merge of only some partitions, or of one partition twice, from
    the count of files alone (the build identity lists every input file of the build)."""
    identity = manifest.build.get("identity") if isinstance(manifest.build, dict) else None
    if not isinstance(identity, dict) or not isinstance(identity.get("files"), list):
        return None  # not written by `mlm-data build`: nothing to compare against
    paths = [s.get("path") for s in manifest.sources]
    repeated = sorted((p for p, n in Counter(paths).items() if n > 1), key=str)
    if repeated:
        return f"lists the input {repeated[0]} more than once (a partition merged twice?); merge again"
    total = len(identity["files"])
    partition = manifest.build.get("partition")
    expected = total if partition is None else len(range(partition["index"], total, partition["count"]))
    if len(paths) != expected:
        what = "its build" if partition is None else f"partition {partition['index']} of {partition['count']}"
        return (
            f"holds {len(paths)} of the {expected} input files of {what} (a merge missing partitions?); "
            "merge all partitions again"
        )
    return None


def _check_shard(path: str, shard: dict) -> str | None:
    problem = size_problem(path, shard["bytes"], "manifest")
    if problem is not None:
        return problem if problem == "missing" else f"{problem} (truncated or replaced)"
    digest = file_sha256(path)
    if digest != shard["sha256"]:
        return f"sha256 {digest[:12]}... differs from the manifest's {shard['sha256'][:12]}... (corrupted)"
    return None


def _check_rows(batches, schema, shard: dict, vocab_size: int, seq_len: int) -> str | None:
    rows = tokens = 0
    for batch in batches:
        if not batch.schema.equals(schema):
            return schema_mismatch(batch.schema, schema, seq_len)
        batch.validate(full=True)
        cols = batch_to_numpy(batch)
        bad = row_problem(cols, vocab_size, seq_len)
        if bad is not None:
            return f"row {rows + bad[0]}: {bad[1]}"
        rows += batch.num_rows
        tokens += int(np.asarray(cols["length"], dtype=np.int64).sum())
    if rows != shard["rows"] or tokens != shard["tokens"]:
        return f"{rows} rows / {tokens} tokens, manifest says {shard['rows']} / {shard['tokens']}"
    return None
