"""Mixtures of row sources: draws by weight, a small source repeating in counted passes, the same rows on
any world size, exact loader resume with `source_samples`, per-source validation, and the refusals."""

import hashlib
import shutil

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.shards import ShardReader
from pretrain.config import DataConfig, MaskingConfig, SourceConfig
from pretrain.data.loader import TrainLoader, ValidationLoader
from pretrain.data.masking import MaskingCollator
from pretrain.data.mixture import MixtureSource, interleaving, source_probabilities
from pretrain.data.row_source import RowSource, open_row_sources
from pretrain.data.sampler import GlobalBatchSampler
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, ArrayReader, make_rows

WEB, BOOKS = make_rows(2000, 16, seed=1), make_rows(150, 16, seed=2)


def mixture(weights=(0.75, 0.25), seed=3, books=BOOKS) -> MixtureSource:
    parts = [("web", ArrayReader(WEB, "the web rows")), ("books", ArrayReader(books, "the book rows"))]
    return MixtureSource(parts, source_probabilities(weights, [2000, len(books["length"])], 1.0), seed=seed)


def in_order_sampler(source, rank=0, world=1, micro=4, global_batch=64) -> GlobalBatchSampler:
    return GlobalBatchSampler(
        len(source),
        global_batch_size=global_batch,
        micro_batch_size=micro,
        seed=3,
        rank=rank,
        world_size=world,
        shuffle=False,
    )


def collator() -> MaskingCollator:
    return MaskingCollator(MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=3)


def test_weights_are_drawn_in_every_batch_and_a_small_source_repeats_in_whole_passes():
    source = mixture()
    assert isinstance(source, RowSource) and len(source) == 2150
    sampler = in_order_sampler(source)
    drawn = np.zeros(2, np.int64)
    books_rows = []
    for _ in range(64):  # 4096 samples: past one epoch of the mixture (2150, 2112 used)
        step = sampler.next_step()
        counts = source.count_sources(step.global_batch, step.epoch)
        assert abs(counts[0] - 48) <= 2, counts  # 0.75 x 64 in every global batch
        drawn += counts
        sources, rows = source.locate(step.global_batch, step.epoch)
        assert np.array_equal(np.bincount(sources, minlength=2), counts)
        if step.epoch == 0:
            books_rows += rows[sources == 1].tolist()
    assert sampler.epoch == 1
    assert abs(drawn[0] / drawn.sum() - 0.75) < 0.01 and abs(drawn[1] / drawn.sum() - 0.25) < 0.01
    # 528 draws of 150 rows in the first epoch: whole shuffled passes, each row once per pass (the
    # last, incomplete global batch of an epoch is dropped, and its positions' draws with it)
    assert len(books_rows) == 528
    for p in range(len(books_rows) // 150):
        assert sorted(books_rows[p * 150 : (p + 1) * 150]) == list(range(150))
    assert books_rows[:150] != list(range(150))  # shuffled, not in shard order
    epochs = source.source_epochs({"web": int(drawn[0]), "books": int(drawn[1])})
    assert epochs["books"] == pytest.approx(drawn[1] / 150) and epochs["books"] > 6 > epochs["web"]


def test_the_draw_is_a_pure_function_of_seed_epoch_index_and_weights():
    a, b = mixture(), mixture()
    idx = np.random.default_rng(0).integers(0, 2150, 500)
    for epoch in (0, 1, 7, 10_000):  # in any order and after other draws: caches never change a row
        sa, ra = a.locate(idx, epoch)
        sb, rb = b.locate(idx[::-1], epoch)
        assert np.array_equal(sa, sb[::-1]) and np.array_equal(ra, rb[::-1])
    assert not np.array_equal(a.locate(idx, 0)[1], mixture(seed=4).locate(idx, 0)[1])
    assert not np.array_equal(a.locate(idx, 0)[0], mixture(weights=(0.5, 0.5)).locate(idx, 0)[0])
    rows = a.take(idx[:8], 1)
    sources, local = a.locate(idx[:8], 1)
    for i in range(8):
        part = WEB if sources[i] == 0 else BOOKS
        assert np.array_equal(rows["input_ids"][i], part["input_ids"][local[i]])


def test_the_interleaving_keeps_tiny_weights_and_sizes_give_weights_by_temperature():
    source_of, _, quota = interleaving(np.array([0.999, 0.001]))
    assert quota[1] >= 64 and quota.sum() == len(source_of)
    assert quota[1] / quota.sum() == pytest.approx(0.001, rel=0.02)
    assert np.allclose(source_probabilities([None, None], [100, 900], 1.0), [0.1, 0.9])
    p = source_probabilities([None, None], [100, 900], 2.0)  # p ~ n^(1/2): 10 : 30
    assert np.allclose(p, [0.25, 0.75])
    assert np.allclose(source_probabilities([3.0, 1.0], [100, 900], 1.0), [0.75, 0.25])


def run_loader(world, rank, steps, state=None):
    source = mixture()
    loader = TrainLoader(source, in_order_sampler(source, rank, world, micro=4, global_batch=32), collator())
    if state is not None:
        loader.load_state_dict(state)
    with loader:
        return [next(loader) for _ in range(steps)], loader.state_dict()


def test_one_and_two_ranks_see_the_same_rows_masks_and_source_samples():
    single, single_state = run_loader(1, 0, 6)
    halves = [run_loader(2, r, 6) for r in (0, 1)]
    for s, step in enumerate(single):
        ids = [b["input_ids"] for b in step.micro_batches]
        ranks = [b["input_ids"] for half in halves for b in half[0][s].micro_batches]
        assert all(np.array_equal(x, y) for x, y in zip(ids, ranks, strict=True))
        labels = [b["masked_labels"] for b in step.micro_batches]
        rank_labels = [b["masked_labels"] for half in halves for b in half[0][s].micro_batches]
        assert all(np.array_equal(x, y) for x, y in zip(labels, rank_labels, strict=True))
    assert single_state["source_samples"] == halves[0][1]["source_samples"] == halves[1][1]["source_samples"]
    assert sum(single_state["source_samples"].values()) == 6 * 32


def test_a_resumed_loader_continues_with_the_same_rows_and_source_samples():
    steps, _ = run_loader(1, 0, 9)
    first, state = run_loader(1, 0, 4)
    resumed, end = run_loader(1, 0, 5, state=state)
    for a, b in zip(steps[4:], resumed, strict=True):
        assert np.array_equal(a.micro_batches[0]["input_ids"], b.micro_batches[0]["input_ids"])
        assert a.state_after == b.state_after
    assert end["source_samples"] == steps[-1].state_after["source_samples"]


def test_validation_reads_each_source_with_the_batch_cap_shared_by_weight():
    source = mixture()
    loader = ValidationLoader(source, collator(), batch_size=4, rank=0, world_size=1, max_batches=8)
    assert loader.part_names == ("web", "books") and len(loader) == 8
    parts = [part for part, _ in loader.parts()]
    assert parts == [0] * 6 + [1] * 2
    whole = ValidationLoader(source, collator(), batch_size=50, rank=0, world_size=1, max_batches=None)
    assert len(whole) == 2000 // 50 + 150 // 50


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("tokenizer_fingerprint", "tokenizer (fingerprint)"),
        ("seq_len", "row length (seq_len)"),
        ("has_pairs", "sentence pairs"),
        ("has_document_starts", "document starts"),
    ],
)
def test_sources_that_cannot_train_together_are_refused_naming_the_pair(change, what):
    other = ArrayReader(BOOKS, "the book rows")
    setattr(
        other,
        change,
        {
            "tokenizer_fingerprint": hashlib.sha256(b"x").hexdigest(),
            "seq_len": 32,
            "has_document_starts": "doc_start" not in WEB,  # one source of format 1, one of format 2
        }.get(change, True),
    )
    with pytest.raises(DataError) as refused:
        MixtureSource([("web", ArrayReader(WEB, "the web rows")), ("books", other)], [0.5, 0.5], seed=0)
    message = str(refused.value)
    assert "'web' (the web rows) and 'books' (the book rows) differ in " + what in message
    assert "\n" not in message


def test_shard_sets_are_matched_by_tokenizer_fingerprint_not_path(tiny_shards, tiny_nsp_shards, tmp_path):
    copy = shutil.copytree(tiny_shards, tmp_path / "copy")  # another path, the same tokenizer
    data = DataConfig(sources=[SourceConfig(str(tiny_shards), 3), SourceConfig(str(copy), 1)])
    train, validation = open_row_sources(data, seed=0)
    assert train.source_names == ("full", "copy") and train.weights == [["full", 0.75], ["copy", 0.25]]
    assert len(train) == 2 * len(train.parts[0]) and validation.source_names == train.source_names
    idx = np.arange(0, 4096, 37)
    sources, rows = train.locate(idx, 2)
    batch = train.take(idx, 2)  # one read over both shard sets: the rows each part gives
    for i in range(len(idx)):
        row = train.parts[sources[i]].take([rows[i]])
        assert all(np.array_equal(batch[k][i], row[k][0]) for k in row)
    with pytest.raises(DataError, match="do not stack with those of the shards in"):
        ShardReader.concatenate([train.parts[0], ShardReader(str(tiny_nsp_shards))], "mixed")
    mixed = DataConfig(sources=[SourceConfig(str(tiny_shards)), SourceConfig(str(tiny_nsp_shards))])
    with pytest.raises(DataError, match="'full' .* and 'nsp' .* differ in sentence pairs"):
        open_row_sources(mixed, seed=0)


def test_a_source_without_rows_is_refused_by_name_when_drawn_from():
    empty = {k: v[:0] for k, v in BOOKS.items()}
    with pytest.raises(DataError, match="data.sources 'books' has no rows in this split"):
        mixture(books=empty).take(np.arange(4), 0)
