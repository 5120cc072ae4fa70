"""`mlm-data merge`: the K partition outputs of one build (`build --num-partitions K --partition-index
I`), checked to be one build with one segmentation and every partition once, joined into one shards
directory (shards hard-linked, or copied across filesystems, in partition order; one manifest)."""

from __future__ import annotations

import os
import shutil

from data_pipeline.errors import DataError
from data_pipeline.integrity import commit_temp, commit_temp_dir, remove_quietly, temp_path
from data_pipeline.shards.manifest import MANIFEST_NAME, Manifest
from data_pipeline.tokenizer.segment import describe_segmenter
from data_pipeline.shards.format import SPLITS


def merge_parts(part_dirs: list[str], out: str) -> Manifest:
    """Join the K partition builds of one build into `out`: shards hard-linked (copied across
    filesystems) in partition order, one manifest.

    Raises DataError naming the part whose tokenizer, seq_len, mode, id dtype, shard format or data identity
    (`Manifest.data_identity`) differs from the first part's, a partition index given twice or missing
    (every index 0..K-1 exactly once), a part that is unfinished, or an `out` that already holds a
    manifest.
    """
    if not part_dirs:
        raise DataError("merge needs at least one partition directory")
    manifests = [Manifest.load(p) for p in part_dirs]
    _check_one_build(part_dirs, manifests)
    order = _partition_order(part_dirs, manifests)
    part_dirs, manifests = [part_dirs[i] for i in order], [manifests[i] for i in order]
    first = manifests[0]
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        raise DataError(f"{out} already holds a manifest; choose an empty --out")
    os.makedirs(out, exist_ok=True)
    splits = {}
    for split in SPLITS:
        shards = []
        for path, m in zip(part_dirs, manifests, strict=True):
            for shard in m.splits[split]["shards"]:
                name = f"{split}-{len(shards):05d}.arrow"
                _link(os.path.join(path, shard["file"]), os.path.join(out, name))
                shards.append({**shard, "file": name})
        splits[split] = {
            "rows": sum(s["rows"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": shards,
        }
    counts: dict[str, int] = {}
    for m in manifests:
        for key, n in m.counts.items():
            counts[key] = counts.get(key, 0) + n
    identity = dict(first.build["identity"])
    segmenters = [m.build["identity"].get("segmenter") for m in manifests]
    if any(segmenters):
        identity["segmenter"] = next(s for s in segmenters if s)
    tok_dst = os.path.join(out, "tokenizer")
    if not os.path.exists(tok_dst):
        _copy_dir(os.path.join(part_dirs[0], first.tokenizer["dir"]), tok_dst)
    merged = Manifest(
        seq_len=first.seq_len,
        mode=first.mode,
        id_dtype=first.id_dtype,
        tokenizer=first.tokenizer,
        splits=splits,
        sources=[s for m in manifests for s in m.sources],
        counts=counts,
        build={**first.build, "partition": None, "merged_from": [os.path.abspath(p) for p in part_dirs],
               "merged_partitions": len(part_dirs), "identity": identity},
        format_version=first.format_version,  # the parts' shards are linked as they are
    )
    merged.save(out)
    return merged


def _check_one_build(part_dirs: list[str], manifests: list[Manifest]) -> None:
    """Raise DataError naming the first part that is not from the same build as the first part."""
    first = manifests[0]
    for path, m in zip(part_dirs, manifests, strict=True):
        for key in ("seq_len", "mode", "id_dtype", "format_version"):
            mine, theirs = getattr(m, key), getattr(first, key)
            if mine != theirs:
                raise DataError(
                    f"{path}: {key} {mine!r} differs from {part_dirs[0]}'s {theirs!r}; "
                    "only partitions of one build can be merged"
                )
        if m.tokenizer["hash"] != first.tokenizer["hash"]:
            raise DataError(f"{path}: built with a different tokenizer than {part_dirs[0]}; cannot merge")
        try:  # the segmenter is in a part's identity only if that part segmented: compared below
            same = m.data_identity(without=("segmenter",)) == first.data_identity(without=("segmenter",))
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
        if not same:
            raise DataError(
                f"{path}: built from other inputs or settings than {part_dirs[0]} (another data identity); "
                "only partitions of one build can be merged"
            )
    _check_same_segmentation(part_dirs, manifests)


def _check_same_segmentation(part_dirs: list[str], manifests: list[Manifest]) -> None:
    """Raise DataError when two parts word-segmented their Chinese documents differently (another
    segmenter or version, or one part without a segmenter)."""
    used = [(p, m.build["identity"].get("segmenter")) for p, m in zip(part_dirs, manifests, strict=True)]
    segmented = [(p, s) for p, s in used if s]
    for path, segmenter in segmented[1:]:
        if segmenter != segmented[0][1]:
            raise DataError(
                f"{path}: its Chinese documents were segmented by {describe_segmenter(segmenter)}, those of "
                f"{segmented[0][0]} by {describe_segmenter(segmented[0][1])}; "
                "rebuild the partitions with one segmenter"
            )
    for path, m in zip(part_dirs, manifests, strict=True):
        unsegmented = m.counts.get("unsegmented_chinese_documents", 0)
        if segmented and unsegmented:
            raise DataError(
                f"{path}: {unsegmented} of its Chinese documents were not word-segmented (no segmenter where "
                f"it was built), but {segmented[0][0]}'s were: rebuild it with the segmenter installed"
            )


def _partition_order(part_dirs: list[str], manifests: list[Manifest]) -> list[int]:
    """Positions of the parts sorted by partition index; DataError unless 0..K-1 each appear once."""
    where: dict[int, str] = {}
    count = None
    for path, m in zip(part_dirs, manifests, strict=True):
        partition = m.build.get("partition") or {"index": 0, "count": 1}
        if count is not None and partition["count"] != count:
            raise DataError(
                f"{path}: partition {partition['index']} of {partition['count']}, but {part_dirs[0]} is one "
                f"of {count}; only partitions of one build can be merged"
            )
        count = partition["count"]
        if partition["index"] in where:
            raise DataError(
                f"partition {partition['index']} of {count} is given twice ({where[partition['index']]} and "
                f"{path}); pass each partition directory once"
            )
        where[partition["index"]] = path
    missing = [i for i in range(count) if i not in where]
    if missing:
        listed = ", ".join(map(str, missing))
        raise DataError(
            f"partition{'s' if len(missing) > 1 else ''} {listed} of {count} missing: merge needs all "
            f"{count} partition directories (mlm-data build --num-partitions K --partition-index I, I < K)"
        )
    index_of = {path: index for index, path in where.items()}
    return sorted(range(len(part_dirs)), key=lambda i: index_of[part_dirs[i]])


def _link(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        _copy(src, dst)


def _copy(src: str, dst: str) -> None:
    """Copy `src` to `dst` (through its temp name). An OSError names the file it is about (shutil's
    write errors name none), so that the CLI's one line (`os_error_line`) says which copy failed."""
    tmp = temp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        commit_temp(tmp, dst)
    except OSError as exc:
        remove_quietly(tmp)
        # shutil names both files of a failed copy (src, dst); only an error opening `src` is about it
        named = src if exc.filename == src and exc.filename2 is None else dst
        raise OSError(exc.errno, exc.strerror or str(exc), named) from exc


def _copy_dir(src: str, dst: str) -> None:
    """Copy the flat directory `src` (the tokenizer) to `dst` whole or not at all: into a temp dir, then
    renamed (shutil.copytree would leave a partial `dst` a rerun takes for complete, and reports a full
    disk as a list of tuples)."""
    tmp = temp_path(dst)
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    for name in sorted(os.listdir(src)):
        if not os.path.isfile(os.path.join(src, name)):
            raise DataError(f"{os.path.join(src, name)}: not a file; a tokenizer dir holds only files")
        _copy(os.path.join(src, name), os.path.join(tmp, name))
    commit_temp_dir(tmp, dst)
