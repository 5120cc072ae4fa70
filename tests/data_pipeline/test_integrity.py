"""The one copy of the atomic write, the sha256 of a file and the listed-size check."""

import hashlib
import json
import os

import pytest

from data_pipeline.integrity import (
    atomic_open,
    commit_temp_dir,
    file_sha256,
    files_sha256,
    size_problem,
    write_atomic,
    write_json_atomic,
)


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "record.json"
    write_json_atomic(str(path), {"step": 1}, sort_keys=True)
    with pytest.raises(RuntimeError), atomic_open(str(path), "w") as f:
        f.write('{"step": 2')  # half a record, then the writer dies
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["record.json"]


def test_write_atomic_replaces_bytes_and_text(tmp_path):
    path = tmp_path / "f"
    write_atomic(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_atomic(str(path), "ü\n")
    assert path.read_text(encoding="utf-8") == "ü\n"


def test_sha256_and_size_problem_name_what_differs(tmp_path):
    path = tmp_path / "shard.arrow"
    data = os.urandom((1 << 22) + 3)  # more than one read block
    path.write_bytes(data)
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
    assert size_problem(str(path), len(data)) is None
    assert size_problem(str(path), len(data) + 1, "manifest") == (
        f"size {len(data)} bytes, manifest says {len(data) + 1}"
    )
    assert size_problem(str(tmp_path / "gone.arrow"), 1) == "missing"
    assert size_problem(str(tmp_path), 1) == "missing"  # a directory is not the listed file


def test_files_sha256_keeps_the_order_and_raises_for_a_missing_file(tmp_path):
    blobs = [os.urandom(n) for n in (0, 5, (1 << 22) + 1, 7, 1 << 20)]
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(str(tmp_path / f"f{i}"))
        (tmp_path / f"f{i}").write_bytes(blob)
    expected = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    assert files_sha256(paths, threads=3) == expected == files_sha256(paths, threads=1)
    with pytest.raises(FileNotFoundError, match="gone"):
        files_sha256([*paths, str(tmp_path / "gone")], threads=3)


def test_commit_temp_dir_refuses_a_non_empty_target(tmp_path):
    tmp, out = tmp_path / ".tmp-out", tmp_path / "out"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"new")
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(OSError):
        commit_temp_dir(str(tmp), str(out))
    assert (out / "keep.txt").read_text() == "old"
    os.remove(out / "keep.txt")
    commit_temp_dir(str(tmp), str(out))
    assert (out / "model.safetensors").read_bytes() == b"new" and not tmp.exists()
