"""ShardWriter/ShardReader round trip, zero-copy views, datasets compatibility, errors naming the file."""

import os

import datasets
import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.integrity import file_sha256
from data_pipeline.shards.format import ShardReader, ShardWriter, shard_schema
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.verify import verify_shards

SEQ_LEN = 16


def _rows(n: int, start: int) -> dict[str, np.ndarray]:
    ids = (np.arange(n * SEQ_LEN, dtype=np.uint16).reshape(n, SEQ_LEN) + start) % 500
    doc_start = (ids % 7 == 0).astype(np.uint8)
    doc_start[:, 0] = 1
    return {
        "input_ids": ids,
        "word_start": (ids % 2).astype(np.uint8),
        "doc_start": doc_start,
        "length": np.full(n, SEQ_LEN, np.int32),
        "segment_b_start": np.full(n, 5, np.int32),
        "pair_label": (np.arange(n) % 2).astype(np.int8),
    }


def write_shards(
    out, shards: dict[str, list[dict]], manifest_seq_len: int = SEQ_LEN, format_version: int = 2
) -> None:
    """Write train shards {name: [row batches]} (nsp schema, vocab 500) and a manifest that matches them;
    `format_version=1`: the way mlm-data wrote them before the doc_start column."""
    schema = shard_schema(SEQ_LEN, "uint16", with_pairs=True, with_doc_start=format_version >= 2)
    listed = []
    for name, pieces in shards.items():
        writer = ShardWriter(str(out / name), schema)
        for piece in pieces:
            writer.write(piece)
        rows, tokens = writer.close()
        path = str(out / name)
        listed.append(
            {
                "file": name,
                "rows": rows,
                "tokens": tokens,
                "bytes": os.path.getsize(path),
                "sha256": file_sha256(path),
            }
        )
    Manifest(
        seq_len=manifest_seq_len,
        mode="nsp",
        id_dtype="uint16",
        tokenizer={
            "dir": "tokenizer",
            "hash": "x",
            "vocab_size": 500,
            "special_ids": {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
        },
        splits={
            "train": {
                "rows": sum(s["rows"] for s in listed),
                "tokens": sum(s["tokens"] for s in listed),
                "shards": listed,
            },
            "validation": {"rows": 0, "tokens": 0, "shards": []},
        },
        format_version=format_version,
    ).save(str(out))


@pytest.fixture
def shards_dir(tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    """Two train shards (the first written in two batches) and a manifest, plus the rows written."""
    parts = [_rows(7, 0), _rows(5, 1000), _rows(4, 2000)]
    write_shards(tmp_path, {"train-00000.arrow": parts[:2], "train-00001.arrow": parts[2:]})
    expected = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return str(tmp_path), expected


def test_reader_returns_every_row_by_global_index_as_views(shards_dir):
    path, expected = shards_dir
    reader = ShardReader(path, "train")
    assert len(reader) == 16 and reader.seq_len == SEQ_LEN and reader.has_pairs
    for i in (0, 6, 7, 11, 12, 15, -1):
        row = reader[i]
        for key, column in expected.items():
            np.testing.assert_array_equal(row[key], column[i])
    assert not reader[3]["input_ids"].flags.owndata  # a view into the memory-mapped file
    batch = reader.take([15, 0, 8])
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"][[15, 0, 8]])
    np.testing.assert_array_equal(
        reader.take(np.array([-1, 7]))["pair_label"], expected["pair_label"][[15, 7]]
    )
    with pytest.raises(IndexError):
        reader.take([3, 16])
    assert len(ShardReader(path, "validation")) == 0
    with pytest.raises(IndexError):
        reader[16]


def test_format_1_shards_without_doc_start_still_load(tmp_path):
    parts = [{k: v for k, v in _rows(6, 0).items() if k != "doc_start"}]
    write_shards(tmp_path, {"train-00000.arrow": parts}, format_version=1)
    reader = ShardReader(str(tmp_path), "train")
    assert not reader.has_document_starts and len(reader) == 6
    rows = reader.take([5, 1])
    assert "doc_start" not in rows
    np.testing.assert_array_equal(rows["input_ids"], parts[0]["input_ids"][[5, 1]])
    assert not any("train-00000.arrow" in p for p in verify_shards(str(tmp_path)))  # (no tokenizer dir)


def test_a_manifest_of_an_unknown_format_version_is_refused(tmp_path):
    write_shards(tmp_path, {"train-00000.arrow": [_rows(2, 0)]}, format_version=3)
    with pytest.raises(DataError, match="format_version 3, this mlm-data reads 1 and 2; rebuild the shards"):
        ShardReader(str(tmp_path))


def test_a_row_whose_doc_start_is_not_a_flag_is_named(tmp_path):
    bad = _rows(4, 0)
    bad["doc_start"][2, 5] = 7
    write_shards(tmp_path, {"train-00000.arrow": [bad]})
    with pytest.raises(DataError, match=r"train-00000.arrow: row 2 \(train sample 2\): doc_start is not 0/1"):
        ShardReader(str(tmp_path)).take([0, 1, 2, 3])
    assert any("row 2: doc_start" in p for p in verify_shards(str(tmp_path)))


def test_shards_load_with_datasets_from_file(shards_dir):
    path, expected = shards_dir
    ds = datasets.Dataset.from_file(os.path.join(path, "train-00001.arrow"))
    assert ds.num_rows == 4
    assert ds[2]["input_ids"] == expected["input_ids"][14].tolist()


def test_reader_names_a_missing_or_truncated_shard_and_a_missing_manifest(shards_dir, tmp_path_factory):
    path, _ = shards_dir
    shard = os.path.join(path, "train-00001.arrow")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 10)
    with pytest.raises(DataError, match="train-00001.arrow: size"):
        ShardReader(path)
    assert any("train-00001.arrow" in p and "size" in p for p in verify_shards(path))
    os.remove(shard)
    with pytest.raises(DataError, match="train-00001.arrow: shard listed in the manifest is missing"):
        ShardReader(path)
    empty = str(tmp_path_factory.mktemp("empty"))
    with pytest.raises(DataError, match="manifest.json not found"):
        ShardReader(empty)


def test_an_aborted_writer_leaves_no_file(tmp_path):
    writer = ShardWriter(str(tmp_path / "train-00000.arrow"), shard_schema(SEQ_LEN, "uint16", False))
    keys = ("input_ids", "word_start", "doc_start", "length")
    writer.write({k: v for k, v in _rows(3, 0).items() if k in keys})
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_data_identity_ignores_partition_fields_only():
    from data_pipeline.shards.manifest import Manifest

    def manifest(**settings):
        identity = {"settings": {"seq_len": 64, **settings}, "tokenizer": "t", "files": [["a.txt", 3]]}
        return Manifest(
            seq_len=64,
            mode="full-sentences",
            id_dtype="uint16",
            tokenizer={},
            splits={},
            build={"identity": identity},
        )

    part0 = manifest(num_partitions=2, partition_index=0)
    part1 = manifest(num_partitions=2, partition_index=1)
    assert part0.data_identity() == part1.data_identity() == manifest().data_identity()
    assert manifest(seq_len=128).data_identity() != part0.data_identity()


def _damaged(rows: dict[str, np.ndarray], row: int, column: str, value) -> dict[str, np.ndarray]:
    rows = {k: v.copy() for k, v in rows.items()}
    rows[column][row] = value
    return rows


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("input_ids", 600, "token id 600 >= vocab_size 500"),
        ("length", 0, "length 0 outside 1..16"),  # a zeroed length column trained with loss 0.0
        ("length", SEQ_LEN + 1, "length 17 outside 1..16"),
        ("pair_label", 3, "pair_label 3 is not 0 or 1"),
    ],
)
def test_take_names_the_shard_and_row_of_a_row_the_trainer_cannot_use(tmp_path, column, value, problem):
    # Row 2 of the second record batch of the first shard: shard row 9, global sample 9.
    second = _damaged(_rows(5, 1000), 2, column, value)
    write_shards(tmp_path, {"train-00000.arrow": [_rows(7, 0), second], "train-00001.arrow": [_rows(4, 0)]})
    reader = ShardReader(str(tmp_path))  # sizes match the manifest: only reading the rows shows it
    reader.take([0, 8, 10, 15])  # batches without the bad row are fine
    with pytest.raises(DataError) as err:
        reader.take([13, 9, 1])
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'train-00000.arrow'}: row 9 (train sample 9): {problem}")
    assert "mlm-data verify" in message
    found, tokenizer = verify_shards(str(tmp_path))  # write_shards writes no tokenizer dir
    assert tokenizer.endswith(f"directory {tmp_path / 'tokenizer'} does not exist or is not a directory")
    assert "train-00000.arrow" in found and f"row 9: {problem}" in found


def test_rows_of_specials_only_and_length_one_are_legal(tmp_path):
    rows = _rows(3, 0)
    rows["length"][:] = [1, 2, SEQ_LEN]  # e.g. [CLS] alone: nothing to mask, still a valid row
    write_shards(tmp_path, {"train-00000.arrow": [rows]})
    assert ShardReader(str(tmp_path)).take([0, 1, 2])["length"].tolist() == [1, 2, SEQ_LEN]


def test_rows_wider_than_the_manifest_seq_len_are_refused_when_opened(tmp_path):
    write_shards(tmp_path, {"train-00000.arrow": [_rows(4, 0)]}, manifest_seq_len=8)
    with pytest.raises(
        DataError,
        match=r"train-00000\.arrow: rows are 16 tokens wide but the manifest's "
        "seq_len is 8",
    ):
        ShardReader(str(tmp_path))
