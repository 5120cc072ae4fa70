"""What a build reads and whether it is still the same build: skipped files are counted (and too many fail),
an input edited in place (same size) is never taken for the old build, finished or interrupted, and a full
or read-only disk is one line."""

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.build import pipeline as build

from data_pipeline.build import worker as build_worker

from data_pipeline.ingest import file_parts
from data_pipeline.build.pipeline import BuildConfig, run_build
from data_pipeline.cli import main
from data_pipeline.errors import DataError

MLM_DATA = str(Path(sys.executable).parent / "mlm-data")


@pytest.fixture
def corpus(sample_documents, tmp_path) -> Path:
    """Three .txt files of 25 sample documents each (three work units), editable by the test."""
    out = tmp_path / "corpus"
    out.mkdir()
    for i in range(3):
        (out / f"part-{i}.txt").write_text(
            "\n\n".join(sample_documents[25 * i : 25 * (i + 1)]), encoding="utf-8"
        )
    return out


def _cfg(corpus, tokenizer, out, **kw) -> BuildConfig:
    return BuildConfig(inputs=[str(corpus)], tokenizer=tokenizer, out=str(out), seq_len=32, **kw)


def _files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.suffix in (".arrow", ".json")}


def _edit_same_size(path: Path, keep_mtime: bool = False) -> None:
    """Change the text without changing its size; with keep_mtime, put the old mtime back as well."""
    st = path.stat()
    data = path.read_bytes()
    at = data.index(b"the ")
    path.write_bytes(data[:at] + b"THE " + data[at + 4 :])
    mtime = st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 10**9
    os.utime(path, ns=(st.st_atime_ns, mtime))


def _crash_before_packing(monkeypatch) -> None:
    """Make the next build stop after every work unit is on disk, as a kill at that point would."""

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(build, "_pack", crash)


def test_a_finished_build_of_an_input_edited_in_place_is_not_up_to_date(
    corpus, wordpiece_tokenizer_dir, tmp_path, capsys
):
    out = tmp_path / "shards"
    args = ["build", "--input", str(corpus), "--tokenizer", wordpiece_tokenizer_dir, "--out", str(out)]
    assert main([*args, "--seq-len", "32"]) == 0
    before = _files(out)
    edited = corpus / "part-1.txt"
    os.utime(edited, ns=(0, edited.stat().st_mtime_ns + 10**9))  # touched, same bytes: still this build
    capsys.readouterr()
    assert main([*args, "--seq-len", "32"]) == 0
    assert "already holds this build" in capsys.readouterr().out

    _edit_same_size(edited)
    assert main([*args, "--seq-len", "32"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mlm-data build: error: output dir {out} holds a build of other inputs ({edited} changed since it "
        "was built (its sha256 differs)); choose another --out or pass --overwrite to replace it"
    )
    assert "--overwrite" in err and _files(out) == before  # refused, untouched

    assert main([*args, "--seq-len", "32", "--overwrite"]) == 0
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, tmp_path / "fresh"))
    assert _files(out) == _files(tmp_path / "fresh") != before


def test_an_interrupted_build_rereads_an_input_edited_between_runs(
    corpus, wordpiece_tokenizer_dir, tmp_path, monkeypatch
):
    out = tmp_path / "shards"
    with monkeypatch.context() as m:
        _crash_before_packing(m)
        with pytest.raises(KeyboardInterrupt):
            run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))
    assert len(list((out / ".work").glob("unit-*.done"))) == 3
    _edit_same_size(corpus / "part-2.txt")  # same size: the identity alone cannot tell
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, tmp_path / "fresh"))
    assert _files(out) == _files(tmp_path / "fresh")


def test_an_edit_that_keeps_size_and_mtime_is_caught_by_the_sha256_before_packing(
    corpus, wordpiece_tokenizer_dir, tmp_path, monkeypatch
):
    out = tmp_path / "shards"
    with monkeypatch.context() as m:
        _crash_before_packing(m)
        with pytest.raises(KeyboardInterrupt):
            run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))
    edited = corpus / "part-0.txt"
    _edit_same_size(edited, keep_mtime=True)
    with pytest.raises(DataError, match=rf"{edited}: changed while the build ran \(sha256 .* rerun the same"):
        run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))
    assert not (out / "manifest.json").exists()
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))  # the rerun reads that file again
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, tmp_path / "fresh"))
    assert _files(out) == _files(tmp_path / "fresh")


def test_an_edit_in_one_block_of_a_big_file_is_caught_and_the_file_read_again(
    corpus, wordpiece_tokenizer_dir, tmp_path, monkeypatch
):
    big = tmp_path / "big"
    big.mkdir()
    (big / "all.txt").write_bytes(b"\n\n".join((corpus / f"part-{i}.txt").read_bytes() for i in range(3)))
    for name in ("MIN_PART_BYTES", "MAX_PART_BYTES"):  # several work units for one file
        monkeypatch.setattr(file_parts, name, 16 << 10)
    out = tmp_path / "shards"
    with monkeypatch.context() as m:
        _crash_before_packing(m)
        with pytest.raises(KeyboardInterrupt):
            run_build(_cfg(big, wordpiece_tokenizer_dir, out))
    assert len(list((out / ".work").glob("unit-000000-*.done"))) > 3
    _edit_same_size(big / "all.txt", keep_mtime=True)  # in the first block that holds "the "
    with pytest.raises(
        DataError, match=rf"{big / 'all.txt'}: changed while the build ran \(sha256 of bytes 0-"
    ):
        run_build(_cfg(big, wordpiece_tokenizer_dir, out))
    assert not list((out / ".work").glob("unit-*.done"))  # every unit of that file is read again
    run_build(_cfg(big, wordpiece_tokenizer_dir, out))
    run_build(_cfg(big, wordpiece_tokenizer_dir, tmp_path / "fresh"))
    assert _files(out) == _files(tmp_path / "fresh")
    touched = big / "all.txt"
    os.utime(touched, ns=(0, touched.stat().st_mtime_ns + 10**9))  # same bytes: its digest still matches
    assert run_build(_cfg(big, wordpiece_tokenizer_dir, out)).get("up_to_date")


def test_chunks_of_a_half_read_input_are_not_mixed_with_its_new_contents(
    corpus, wordpiece_tokenizer_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(build_worker, "CHUNK_CHARS", 20_000)  # several chunks per file
    out = tmp_path / "shards"
    with monkeypatch.context() as m:
        _crash_before_packing(m)
        with pytest.raises(KeyboardInterrupt):
            run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))
    assert len(list((out / ".work").glob("unit-000001-00000-*.npz"))) > 2
    (out / ".work" / "unit-000001-00000.done").unlink()  # as if killed before the unit's last chunk
    _edit_same_size(corpus / "part-1.txt")
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, out))
    run_build(_cfg(corpus, wordpiece_tokenizer_dir, tmp_path / "fresh"))
    assert _files(out) == _files(tmp_path / "fresh")


def test_too_many_skipped_bytes_fail_the_build_until_included_or_accepted(
    corpus, wordpiece_tokenizer_dir, tmp_path, capsys
):
    for i in range(2):  # a Wikipedia extractor's files: text without an extension
        shutil.copy(corpus / f"part-{i}.txt", corpus / f"wiki_0{i}")
    out = tmp_path / "shards"
    args = ["build", "--input", str(corpus), "--tokenizer", wordpiece_tokenizer_dir, "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 input files" in err and "(no extension) x2" in err
    assert str(corpus / "wiki_00") in err and "--ext ''" in err and "--accept-skipped" in err
    assert not (out / "manifest.json").exists()

    assert main([*args, "--accept-skipped"]) == 0
    summary = capsys.readouterr().out
    skipped = json.loads((out / "manifest.json").read_text())["build"]["skipped"]
    assert skipped["files"] == 2 and skipped["by_extension"]["(no extension)"]["files"] == 2
    assert f"skipped 2 files ({skipped['bytes']} bytes: (no extension) x2)" in summary
    accepted = json.loads((out / "manifest.json").read_text())["counts"]["documents"]

    assert main([*args, "--ext", "", "--overwrite"]) == 0
    assert "skipped 0 files (0 bytes)" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["counts"]["documents"] == accepted + 50
    assert main([*args, "--max-skipped-fraction", "0.9", "--overwrite"]) == 0


def test_a_full_disk_is_one_line_and_leaves_no_manifest(corpus, wordpiece_tokenizer_dir, tmp_path):
    out = tmp_path / "shards"
    limit = 20_000  # bytes per file: the first chunk of token ids does not fit

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [MLM_DATA, "build", "--input", str(corpus), "--tokenizer", wordpiece_tokenizer_dir, "--out", str(out),
         "--workers", "2"],
        preexec_fn=small_files, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    err = result.stderr.strip().splitlines()
    assert err[-1].startswith("mlm-data build: error: ") and "File too large" in err[-1], result.stderr
    assert "the disk is full" in err[-1] and "Traceback" not in result.stderr
    assert not (out / "manifest.json").exists()


def test_a_read_only_out_is_one_line(corpus, wordpiece_tokenizer_dir, tmp_path):
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    # A read-only tmpfs in a private mount namespace (chmod does not stop root, which CI runs as).
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "ro", "none",
         str(mount_point)], capture_output=True, text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {probe.stderr.strip()}")
    out = mount_point / "shards"
    command = (
        f"mount -t tmpfs -o ro none {mount_point} && exec {MLM_DATA} build --input {corpus} "
        f"--tokenizer {wordpiece_tokenizer_dir} --out {out}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last
        == f"mlm-data build: error: {out}: Read-only file system; that location cannot be written: "
        + ("choose a writable --out")
    )
