"""`Manifest`: the `manifest.json` of a shards directory (written last, atomically) and `verify_shards`."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.manifest_schema import MODES, check_manifest_data  # noqa: F401 (MODES re-exported)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# Settings that say which slice of a partitioned build a directory holds, not what the data is made of.
PARTITION_FIELDS = ("num_partitions", "partition_index")


@dataclass
class Manifest:
    """Everything a reader needs to trust a shards directory (see docs/architecture.md, Contract 1)."""

    seq_len: int
    mode: str
    id_dtype: str
    tokenizer: dict
    splits: dict
    sources: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def rows(self) -> int:
        """Sequences over all splits."""
        return sum(s["rows"] for s in self.splits.values())

    @property
    def tokens(self) -> int:
        """Non-pad tokens (specials included) over all splits."""
        return sum(s["tokens"] for s in self.splits.values())

    def data_identity(self, without: tuple[str, ...] = ()) -> str:
        """Hex sha256 of what the data is made of: the build settings (without the partition fields),
        the scheme, the tokenizer fingerprint, the source files and, when it segmented documents, the
        word segmenter (leave identity keys out with `without`). Every partition of one build, and their
        merge, share it; any other corpus, tokenizer or packing setting gives another. Raises DataError
        when the manifest records no build identity (a manifest not written by `mlm-data build`/`merge`).
        """
        identity = self.build.get("identity") if isinstance(self.build, dict) else None
        if not isinstance(identity, dict) or not isinstance(identity.get("settings"), dict):
            raise DataError("the manifest has no build.identity; rebuild the shards with `mlm-data build`")
        settings = {k: v for k, v in identity["settings"].items() if k not in PARTITION_FIELDS}
        kept = {k: v for k, v in identity.items() if k not in without}
        canonical = json.dumps({**kept, "settings": settings}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def save(self, shards_dir: str) -> None:
        """Write `shards_dir/manifest.json` atomically (temp file, fsync, rename)."""
        path = os.path.join(shards_dir, MANIFEST_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, shards_dir: str) -> Manifest:
        """Read and check `shards_dir/manifest.json` (see `manifest_schema.check_manifest_data`).

        Raises DataError naming the file when it is missing (an incomplete or foreign directory),
        not JSON, of another format version, and naming the key when one is missing, unknown, of the
        wrong type, or names a file outside `shards_dir`.
        """
        path = os.path.join(shards_dir, MANIFEST_NAME)
        if not os.path.isfile(path):
            raise DataError(
                f"{path} not found: {shards_dir} is not a finished shards directory "
                "(run `mlm-data build`, or rerun it to finish an interrupted build)"
            )
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a valid manifest ({exc}); rebuild the shards") from exc
        if isinstance(data, dict) and data.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: format_version {data.get('format_version')!r}, need {FORMAT_VERSION}")
        check_manifest_data(data, path, shards_dir)
        return cls(**data)


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shards(shards_dir: str) -> list[str]:
    """Check every shard against the manifest (size, sha256, Arrow validity, schema, id range, lengths)
    and that the manifest covers its whole build (`coverage_problem`).

    Returns one problem string per bad shard (naming the file), [] when all is well.
    Raises DataError when the manifest itself is missing or unreadable.
    """
    from data_pipeline.shards import batch_to_numpy, read_shard_batches, shard_schema

    manifest = Manifest.load(shards_dir)
    schema = shard_schema(manifest.seq_len, manifest.id_dtype, manifest.mode in ("nsp", "sop"))
    vocab_size = int(manifest.tokenizer["vocab_size"])
    problems = []
    for split in manifest.splits.values():
        for shard in split["shards"]:
            path = os.path.join(shards_dir, shard["file"])
            problem = _check_shard(path, shard, schema, vocab_size, manifest.seq_len)
            if problem is None:
                try:
                    batches = read_shard_batches(path)
                    problem = _check_rows(
                        batches, batch_to_numpy, schema, shard, vocab_size, manifest.seq_len
                    )
                except DataError as exc:
                    problem = str(exc)
            if problem is not None:
                problems.append(f"{path}: {problem}" if not problem.startswith(path) else problem)
    coverage = coverage_problem(manifest)
    if coverage is not None:
        problems.append(f"{os.path.join(shards_dir, MANIFEST_NAME)}: {coverage}")
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


def _check_shard(path: str, shard: dict, schema, vocab_size: int, seq_len: int) -> str | None:
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size != shard["bytes"]:
        return f"size {size} bytes, manifest says {shard['bytes']} (truncated or replaced)"
    digest = file_sha256(path)
    if digest != shard["sha256"]:
        return f"sha256 {digest[:12]}... differs from the manifest's {shard['sha256'][:12]}... (corrupted)"
    return None


def _check_rows(batches, batch_to_numpy, schema, shard: dict, vocab_size: int, seq_len: int) -> str | None:
    from data_pipeline.shards import row_problem

    rows = tokens = 0
    for batch in batches:
        if not batch.schema.equals(schema):
            return f"schema {batch.schema} differs from the expected {schema}"
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
