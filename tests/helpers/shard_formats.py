"""Shards of an older format, made from a fresh build: what a user's existing shards directory holds.

- `format_1_copy(shards_dir, out)`: `shards_dir` rewritten as mlm-data wrote shards before the doc_start
  column (format 1): the same rows without `doc_start`, a manifest of `format_version` 1 listing the new
  sizes and checksums, the same tokenizer and build identity. Returns `out`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from data_pipeline.integrity import file_sha256
from data_pipeline.shards.format import ShardWriter, batch_to_numpy, read_shard_batches, shard_schema
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.manifest_schema import has_pairs


def format_1_copy(shards_dir: Path, out: Path) -> Path:
    """Copy `shards_dir` to `out` in shard format 1 (no doc_start column); returns `out`."""
    manifest = Manifest.load(str(shards_dir))
    schema = shard_schema(manifest.seq_len, manifest.id_dtype, has_pairs(manifest.mode), with_doc_start=False)
    out.mkdir(parents=True)
    shutil.copytree(shards_dir / manifest.tokenizer["dir"], out / manifest.tokenizer["dir"])
    splits = {}
    for name, split in manifest.splits.items():
        shards = []
        for shard in split["shards"]:
            path = str(out / shard["file"])
            writer = ShardWriter(path, schema)
            for batch in read_shard_batches(str(shards_dir / shard["file"])):
                writer.write({k: v for k, v in batch_to_numpy(batch).items() if k != "doc_start"})
            writer.close()
            shards.append({**shard, "bytes": os.path.getsize(path), "sha256": file_sha256(path)})
        splits[name] = {**split, "shards": shards}
    dataclasses.replace(manifest, splits=splits, format_version=1).save(str(out))
    return out
