"""`Manifest`: the `manifest.json` of a shards directory (written last, atomically): the dataclass,
load (checked by `manifest_schema`) and save. A leaf: it imports no other module of the build."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from data_pipeline.errors import DataError
from data_pipeline.integrity import write_json_atomic
from data_pipeline.shards.manifest_schema import check_manifest_data

MANIFEST_NAME = "manifest.json"
# Format 2 added the `doc_start` column (where each packed document starts in a row); format 1 shards,
# without it, still load and train everything that keeps attention across the whole row.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
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
    def has_doc_start(self) -> bool:
        """True when the shards carry the `doc_start` column (format 2 on)."""
        return self.format_version >= 2

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
        """Write `shards_dir/manifest.json` atomically (`integrity.write_json_atomic`)."""
        path = os.path.join(shards_dir, MANIFEST_NAME)
        write_json_atomic(path, asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, shards_dir: str) -> Manifest:
        """Read and check `shards_dir/manifest.json` (see `manifest_schema.check_manifest_data`).

        Raises DataError naming the file when it is missing (an incomplete or foreign directory),
        not JSON, of a format version this version cannot read (not in READABLE_FORMAT_VERSIONS), and
        naming the key when one is missing, unknown, of the wrong type, or names a file outside
        `shards_dir`.
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
        version = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(data, dict) and (isinstance(version, bool) or version not in READABLE_FORMAT_VERSIONS):
            raise DataError(
                f"{path}: format_version {version!r}, this mlm-data reads "
                f"{' and '.join(map(str, READABLE_FORMAT_VERSIONS))}; rebuild the shards with this version's "
                "`mlm-data build`"
            )
        check_manifest_data(data, path, shards_dir)
        return cls(**data)
