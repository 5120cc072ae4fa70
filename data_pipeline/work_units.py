"""The on-disk record of a build's work units (one per input file) under `OUT/.work/`, and the checks that
keep a changed input from being taken for the same build.

Per unit `NNNNNN`: `unit-NNNNNN.start` (the input's size, mtime_ns and sha256 when a worker began reading
it), `unit-NNNNNN-CCCCCC.npz` per chunk, and `unit-NNNNNN.done` (the same record plus the chunk count),
each written atomically. Three checks use the record:

- up front, a unit whose input's size or mtime_ns differ from its done marker is read again;
- a worker that finds chunks made from other content (start record's sha256 differs) drops them, and a
  file whose size or mtime changes while it is read fails the unit;
- before packing, every input is hashed again and must match the sha256 recorded when it was read.
"""

from __future__ import annotations

import glob
import json
import os

from data_pipeline import parallel
from data_pipeline.errors import DataError
from data_pipeline.input_files import SourceFile
from data_pipeline.manifest import file_sha256


def chunk_path(work: str, index: int, chunk: int) -> str:
    """The result file of chunk `chunk` of work unit (input file) `index`."""
    return os.path.join(work, f"unit-{index:06d}-{chunk:06d}.npz")


def done_path(work: str, index: int) -> str:
    """The marker written once every chunk of unit `index` is on disk (JSON: chunks + input record)."""
    return os.path.join(work, f"unit-{index:06d}.done")


def start_path(work: str, index: int) -> str:
    """The input record of unit `index` as it was when a worker began reading it."""
    return os.path.join(work, f"unit-{index:06d}.start")


def atomic_write(path: str, data: bytes) -> None:
    """Write `path` via a fsynced temp file and a rename (never a partial file under the name)."""
    with open(path + ".tmp", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None  # a marker from an older mlm-data: redo the unit


def read_done(work: str, index: int) -> dict | None:
    """The done marker of unit `index` ({"chunks", "size", "mtime_ns", "sha256"}), None if absent."""
    marker = _read_json(done_path(work, index))
    return marker if marker is not None and isinstance(marker.get("chunks"), int) else None


def drop_unit(work: str, index: int) -> None:
    """Remove everything unit `index` wrote (marker first, so nothing looks finished meanwhile)."""
    for path in [done_path(work, index), start_path(work, index), *_chunks(work, index)]:
        if os.path.exists(path):
            os.remove(path)


def _chunks(work: str, index: int) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(work), f"unit-{index:06d}-*.npz*")))


def units_to_do(work: str, units: list[tuple[int, SourceFile]]) -> list[tuple[int, SourceFile]]:
    """The units without a done marker, plus those whose input's size or mtime_ns changed since it was
    written (their marker is removed; the worker decides from the sha256 whether old chunks still hold)."""
    todo = []
    for index, source in units:
        marker = read_done(work, index)
        stat_now = [source.size, source.mtime_ns]
        if marker is not None and [marker.get("size"), marker.get("mtime_ns")] == stat_now:
            continue
        if marker is not None or os.path.exists(done_path(work, index)):
            os.remove(done_path(work, index))
        todo.append((index, source))
    return todo


def begin_unit(work: str, index: int, source: SourceFile) -> dict:
    """Hash the input and record it as unit `index`'s start; chunks from other content are dropped.

    Returns the record {"size", "mtime_ns", "sha256"} (size and mtime as the inputs were expanded).
    """
    record = {"size": source.size, "mtime_ns": source.mtime_ns, "sha256": file_sha256(source.path)}
    previous = _read_json(start_path(work, index))
    if previous is None or previous.get("sha256") != record["sha256"]:
        drop_unit(work, index)  # chunks of an interrupted run over older contents must not be mixed in
    if previous != record:
        atomic_write(start_path(work, index), json.dumps(record, sort_keys=True).encode())
    return record


def finish_unit(work: str, index: int, source: SourceFile, chunks: int, record: dict) -> None:
    """Write unit `index`'s done marker, after checking the input did not change while it was read.

    Raises DataError naming the file when its size or mtime_ns now differ from the record.
    """
    st = os.stat(source.path)
    if (st.st_size, st.st_mtime_ns) != (record["size"], record["mtime_ns"]):
        raise DataError(
            f"{source.path}: changed while the build ran (size {record['size']} -> {st.st_size} bytes, "
            "or its mtime); rerun the same command to read it again"
        )
    atomic_write(done_path(work, index), json.dumps({"chunks": chunks, **record}, sort_keys=True).encode())


def _path_sha256(path: str) -> tuple[str, str]:
    return path, file_sha256(path)


def check_unchanged(work: str, units: list[tuple[int, SourceFile]], workers: int) -> list[dict]:
    """Hash every input again (on `workers` processes) and compare with the sha256 recorded when it was
    read; return the done markers in unit order.

    Raises DataError naming the first changed file, after dropping that unit's results so that a rerun
    reads it again.
    """
    markers = {index: read_done(work, index) for index, _ in units}
    now = dict(parallel.run_units(_path_sha256, [s.path for _, s in units], workers=workers))
    for index, source in units:
        then = markers[index]["sha256"]
        if now[source.path] != then:
            drop_unit(work, index)
            raise DataError(
                f"{source.path}: changed while the build ran (sha256 {now[source.path][:12]}... now, "
                f"{then[:12]}... when it was read); rerun the same command to read it again"
            )
    return [markers[index] for index, _ in units]


def source_record(source: SourceFile, marker: dict) -> dict:
    """The manifest's entry for one input file: path, bytes, mtime_ns and the sha256 it was read with."""
    return {"path": source.path, "bytes": source.size, **{k: marker[k] for k in ("mtime_ns", "sha256")}}


def changed_input(recorded: list, units: list[tuple[int, SourceFile]]) -> str | None:
    """Why a finished build's inputs are not the ones it was made from, or None when they are.

    `recorded` is the manifest's `sources`. An input whose size and mtime_ns match its entry is taken
    as unchanged; one whose mtime differs is hashed, and only a different sha256 counts as changed.
    """
    by_path = {s.get("path"): s for s in recorded if isinstance(s, dict)}
    for _, source in units:
        entry = by_path.get(source.path)
        if entry is None or "sha256" not in entry:
            return f"the manifest does not record the sha256 of {source.path} (built by an older mlm-data)"
        if (entry.get("bytes"), entry.get("mtime_ns")) == (source.size, source.mtime_ns):
            continue
        if file_sha256(source.path) != entry["sha256"]:
            return f"{source.path} changed since it was built (its sha256 differs)"
    return None
