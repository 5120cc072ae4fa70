"""A build's work units (one per block of an input file, `file_parts`), their on-disk record under
`OUT/.work/`, and the checks that keep a changed input from being taken for the same build.

Per unit `unit-FFFFFF-PPPPP` (input file F, block P): `.start` (the input's size and mtime_ns, the
sha256 of the unit's block and the unit's `stamp`, e.g. the word segmenter, when a worker began it),
result files `unit-FFFFFF-PPPPP-CCCCCC.npz` per chunk, and `.done` (the same record plus the chunk
count), each written atomically. Three checks use the record:

- up front, a unit whose input's size or mtime_ns (or whose stamp) differ from its done marker is
  read again;
- a worker that finds chunks made from other content (start record's sha256 or stamp differs) drops
  them, and a file whose size or mtime changes while it is read fails the unit;
- before packing, every unit's block is hashed again and must match the sha256 recorded when it was
  read.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

from data_pipeline.ingest import file_parts

from data_pipeline import parallel
from data_pipeline.errors import DataError
from data_pipeline.ingest.input_files import SourceFile
from data_pipeline.integrity import write_atomic


@dataclass(frozen=True)
class WorkUnit:
    """Block `part` (of `parts`) of input file number `file` (its index in the build's sorted inputs)."""

    file: int
    part: int
    parts: int
    source: SourceFile

    @property
    def name(self) -> str:
        """'unit-FFFFFF-PPPPP': the prefix of everything this unit writes under .work."""
        return f"unit-{self.file:06d}-{self.part:05d}"

    @property
    def block(self) -> tuple[int, int]:
        """The byte range [start, end) of the input this unit hashes."""
        return file_parts.block(self.source, self.part)


def make_units(files: list[tuple[int, SourceFile]]) -> list[WorkUnit]:
    """The work units of (file index, file) pairs, in file order then block order."""
    units = []
    for index, source in files:
        parts = file_parts.part_count(source)
        units.extend(WorkUnit(index, part, parts, source) for part in range(parts))
    return units


def chunk_path(work: str, unit: WorkUnit, chunk: int, suffix: str = ".npz") -> str:
    """A result file of chunk `chunk` of `unit` (`suffix` tells the kinds apart)."""
    return os.path.join(work, f"{unit.name}-{chunk:06d}{suffix}")


def done_path(work: str, unit: WorkUnit) -> str:
    """The marker written once every chunk of `unit` is on disk (JSON: chunks + input record)."""
    return os.path.join(work, f"{unit.name}.done")


def start_path(work: str, unit: WorkUnit) -> str:
    """The input record of `unit` as it was when a worker began reading it."""
    return os.path.join(work, f"{unit.name}.start")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None  # a marker from an older mlm-data: redo the unit


def read_done(work: str, unit: WorkUnit) -> dict | None:
    """The done marker of `unit` ({"chunks", "size", "mtime_ns", "sha256", "stamp"}), None if absent."""
    marker = _read_json(done_path(work, unit))
    return marker if marker is not None and isinstance(marker.get("chunks"), int) else None


def drop_unit(work: str, unit: WorkUnit) -> None:
    """Remove everything `unit` wrote (marker first, so nothing looks finished meanwhile)."""
    for path in [done_path(work, unit), start_path(work, unit), *unit_files(work, unit)]:
        if os.path.exists(path):
            os.remove(path)


def unit_files(work: str, unit: WorkUnit) -> list[str]:
    """Every result file of `unit` (chunks of all kinds, temp files too)."""
    return sorted(glob.glob(os.path.join(glob.escape(work), f"{unit.name}-*")))


def units_to_do(work: str, units: list[WorkUnit], stamp: dict) -> list[WorkUnit]:
    """The units without a done marker, plus those whose input's size or mtime_ns or whose stamp changed
    since it was written (their marker is removed; the worker decides from the sha256 and the stamp
    whether old chunks still hold)."""
    todo = []
    for unit in units:
        marker = read_done(work, unit)
        now = [unit.source.size, unit.source.mtime_ns, stamp]
        if marker is not None and [marker.get("size"), marker.get("mtime_ns"), marker.get("stamp")] == now:
            continue
        if marker is not None or os.path.exists(done_path(work, unit)):
            os.remove(done_path(work, unit))
        todo.append(unit)
    return todo


def begin_unit(work: str, unit: WorkUnit, stamp: dict) -> dict:
    """Hash the unit's block and record it as the unit's start; chunks from other content (or another
    stamp) are dropped.

    Returns the record {"size", "mtime_ns", "sha256", "stamp"} (size and mtime as the inputs were
    expanded).
    """
    source = unit.source
    record = {"size": source.size, "mtime_ns": source.mtime_ns, "stamp": stamp,
              "sha256": file_parts.range_sha256(source.path, *unit.block)}
    previous = _read_json(start_path(work, unit))
    if previous is None or [previous.get("sha256"), previous.get("stamp")] != [record["sha256"], stamp]:
        drop_unit(work, unit)  # chunks of an interrupted run over older contents must not be mixed in
    if previous != record:  # lost or torn in a crash, it only makes the rerun drop the unit's chunks
        write_atomic(start_path(work, unit), json.dumps(record, sort_keys=True))
    return record


def finish_unit(work: str, unit: WorkUnit, chunks: int, record: dict) -> None:
    """Write the unit's done marker, after checking the input did not change while it was read.

    Raises DataError naming the file when its size or mtime_ns now differ from the record.
    """
    st = os.stat(unit.source.path)
    if (st.st_size, st.st_mtime_ns) != (record["size"], record["mtime_ns"]):
        raise DataError(
            f"{unit.source.path}: changed while the build ran (size {record['size']} -> {st.st_size} "
            "bytes, or its mtime); rerun the same command to read it again"
        )
    write_atomic(done_path(work, unit), json.dumps({"chunks": chunks, **record}, sort_keys=True))


def _block_sha256(unit: WorkUnit) -> tuple[str, str]:
    return unit.name, file_parts.range_sha256(unit.source.path, *unit.block)


def check_unchanged(work: str, units: list[WorkUnit], workers: int) -> list[dict]:
    """Hash every unit's block again (on `workers` processes) and compare with the sha256 recorded when
    it was read; return the done markers in unit order.

    Raises DataError naming the first changed file, after dropping that file's units' results so that
    a rerun reads it again.
    """
    markers = [read_done(work, unit) for unit in units]
    now = dict(parallel.run_units(_block_sha256, units, workers=workers))
    for unit, marker in zip(units, markers, strict=True):
        if now[unit.name] != marker["sha256"]:
            for other in units:
                if other.file == unit.file:
                    drop_unit(work, other)
            what = "sha256" if unit.parts == 1 else f"sha256 of bytes {unit.block[0]}-{unit.block[1]}"
            raise DataError(
                f"{unit.source.path}: changed while the build ran ({what} {now[unit.name][:12]}... now, "
                f"{marker['sha256'][:12]}... when it was read); rerun the same command to read it again"
            )
    return markers


def source_records(units: list[WorkUnit], markers: list[dict]) -> list[dict]:
    """The manifest's `sources`: per input file (in order) path, bytes, mtime_ns and the digest it was
    read with (`file_parts.content_sha256`, from its units' block digests)."""
    by_file: dict[int, list] = {}
    for unit, marker in zip(units, markers, strict=True):
        by_file.setdefault(unit.file, [unit.source, marker["mtime_ns"], []])[2].append(marker["sha256"])
    return [
        {"path": source.path, "bytes": source.size, "mtime_ns": mtime_ns,
         "sha256": file_parts.combine_digests(digests)}
        for source, mtime_ns, digests in by_file.values()
    ]


def changed_input(recorded: list, files: list[SourceFile]) -> str | None:
    """Why a finished build's inputs are not the ones it was made from, or None when they are.

    `recorded` is the manifest's `sources`. An input whose size and mtime_ns match its entry is taken
    as unchanged; one whose mtime differs is hashed, and only a different digest counts as changed.
    """
    by_path = {s.get("path"): s for s in recorded if isinstance(s, dict)}
    for source in files:
        entry = by_path.get(source.path)
        if entry is None or "sha256" not in entry:
            return f"the manifest does not record the sha256 of {source.path} (built by an older mlm-data)"
        if (entry.get("bytes"), entry.get("mtime_ns")) == (source.size, source.mtime_ns):
            continue
        if file_parts.content_sha256(source) != entry["sha256"]:
            return f"{source.path} changed since it was built (its sha256 differs)"
    return None
