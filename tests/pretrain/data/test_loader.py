"""Sampler and loaders: exact resume, world-size independent order, epoch rollover, prefetch state."""

import json
import time

import numpy as np
import pytest
import torch

from pretrain.config import MaskingConfig
from pretrain.data.loader import TrainLoader, ValidationLoader, step_counts
from pretrain.data.masking import MaskingCollator
from pretrain.data.sampler import GlobalBatchSampler
from tests.helpers.rows import SPECIAL_IDS, VOCAB_SIZE, ArrayReader, make_rows

ROWS = make_rows(100, 16, seed=5)


def sampler(rank=0, world=1, micro=2, global_batch=8, seed=7, n=100, drop_last=True):
    return GlobalBatchSampler(
        n,
        global_batch_size=global_batch,
        micro_batch_size=micro,
        seed=seed,
        rank=rank,
        world_size=world,
        drop_last=drop_last,
    )


def loader(rank=0, world=1, micro=2, global_batch=8, prefetch=3):
    collator = MaskingCollator(MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=7)
    return TrainLoader(ArrayReader(ROWS), sampler(rank, world, micro, global_batch), collator, prefetch)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_resume_from_state_gives_the_same_next_batches():
    with loader() as first:
        take(first, 5)
        state = json.loads(json.dumps(first.state_dict()))  # must survive JSON, as in trainer_state.json
        expected = take(first, 20)  # crosses the epoch boundary (12 steps per epoch)
    with loader() as resumed:
        resumed.load_state_dict(state)
        got = take(resumed, 20)
    for a, b in zip(expected, got, strict=True):
        assert a.epoch == b.epoch
        np.testing.assert_array_equal(a.rank_indices, b.rank_indices)
        for ma, mb in zip(a.micro_batches, b.micro_batches, strict=True):
            assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_loader_state_counts_consumed_not_prefetched_steps():
    with loader(prefetch=4) as it:
        take(it, 3)
        deadline = time.monotonic() + 10
        while it.sampler.state_dict()["consumed_samples"] <= 24 and time.monotonic() < deadline:
            time.sleep(0.01)  # let the prefetch thread run ahead
        assert it.state_dict() == {"epoch": 0, "consumed_samples": 24, "samples_into_epoch": 24}
        assert it.sampler.state_dict()["consumed_samples"] > 24


def test_two_ranks_see_the_global_batches_of_one_rank():
    one = sampler(world=1, micro=4, global_batch=8)
    two = [sampler(rank=r, world=2, micro=2, global_batch=8) for r in range(2)]
    assert one.grad_accum_steps == 2 and two[0].grad_accum_steps == 2
    for _ in range(30):
        single = one.next_step()
        pair = [s.next_step() for s in two]
        np.testing.assert_array_equal(
            np.concatenate([np.concatenate(p.micro_batches) for p in pair]),
            np.concatenate(single.micro_batches),
        )
        np.testing.assert_array_equal(pair[1].global_batch, single.global_batch)


def test_world_two_checkpoint_resumes_on_world_one():
    two = [sampler(rank=r, world=2, micro=2, global_batch=8) for r in range(2)]
    for _ in range(7):
        for s in two:
            s.next_step()
    one = sampler(world=1, micro=8, global_batch=8)
    one.load_state_dict(two[0].state_dict())
    for _ in range(10):
        expected = np.concatenate([np.concatenate(s.next_step().micro_batches) for s in two])
        np.testing.assert_array_equal(np.concatenate(one.next_step().micro_batches), expected)


def test_epochs_visit_every_sample_once_then_reshuffle():
    s = sampler(n=100, global_batch=10, micro=5)
    epochs = {0: [], 1: []}
    for _ in range(20):
        step = s.next_step()
        epochs[step.epoch].extend(step.global_batch.tolist())
    assert sorted(epochs[0]) == list(range(100)) and sorted(epochs[1]) == list(range(100))
    assert epochs[0] != epochs[1]
    assert s.state_dict() == {"epoch": 1, "consumed_samples": 200, "samples_into_epoch": 100}


def test_each_step_carries_its_cpu_counts_and_the_sampler_state_after_it():
    with loader(prefetch=4) as it:
        steps = take(it, 3)
    for i, step in enumerate(steps):
        b = step.micro_batches
        assert step.counts.dtype == torch.float64 and step.counts.device.type == "cpu"
        assert step.counts.tolist() == [
            sum(float(m["attention_mask"].sum()) for m in b),
            sum(m["masked_labels"].numel() for m in b),
            0,
        ]  # non-pad tokens (the rows are padded), masked tokens, no pairs in these rows
        assert step.counts[0] < sum(m["attention_mask"].numel() for m in b)
        assert step.state_after["consumed_samples"] == 8 * (i + 1)


def test_drop_last_skips_the_partial_batch_and_keep_last_fills_it():
    dropped = sampler(n=100, global_batch=16, micro=8)
    steps = [dropped.next_step() for _ in range(7)]
    assert [s.epoch for s in steps] == [0] * 6 + [1]
    kept = sampler(n=100, global_batch=16, micro=8, drop_last=False)
    steps = [kept.next_step() for _ in range(8)]
    assert [s.epoch for s in steps] == [0] * 7 + [1]
    assert set(np.concatenate([s.global_batch for s in steps[:7]]).tolist()) == set(range(100))


def test_inconsistent_sizes_are_refused():
    with pytest.raises(ValueError, match="not a multiple of micro batch size 3 x world size 2"):
        sampler(world=2, micro=3, global_batch=8)
    with pytest.raises(ValueError, match="has 5 samples, fewer than one global batch of 8"):
        sampler(n=5)


def test_loader_reraises_reader_errors():
    class BrokenReader(ArrayReader):
        def take(self, indices, epoch=0):
            raise OSError("shard train-00003.arrow vanished")

    collator = MaskingCollator(MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=7)
    with TrainLoader(BrokenReader(ROWS), sampler(), collator) as it:
        for _ in range(2):  # and again: a dead thread must not leave the consumer blocked
            with pytest.raises(OSError, match="train-00003"):
                next(it)


def test_validation_loader_is_deterministic_and_split_across_ranks():
    collator = MaskingCollator(MaskingConfig(), special_ids=SPECIAL_IDS, vocab_size=VOCAB_SIZE, seed=7)
    reader = ArrayReader(make_rows(30, 16, seed=9))
    single = ValidationLoader(reader, collator, batch_size=4, rank=0, world_size=1, max_batches=None)
    assert len(single) == 7
    first, again = list(single), list(single)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again, strict=True))
    ranks = [
        ValidationLoader(reader, collator, batch_size=2, rank=r, world_size=2, max_batches=3) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 3
    merged = torch.cat([torch.cat([b0["input_ids"], b1["input_ids"]]) for b0, b1 in zip(*ranks, strict=True)])
    assert torch.equal(merged, torch.cat([b["input_ids"] for b in first[:3]]))
    tiny = ValidationLoader(
        ArrayReader(make_rows(3, 16)), collator, batch_size=8, rank=0, world_size=2, max_batches=5
    )
    assert tiny.batch_size == 1 and len(tiny) == 1
    with pytest.raises(ValueError, match="validation split has 1 rows"):
        ValidationLoader(
            ArrayReader(make_rows(1, 16)), collator, batch_size=8, rank=0, world_size=2, max_batches=5
        )


def test_two_rank_loaders_feed_the_same_masked_batches_as_one():
    with loader(world=1, micro=4, global_batch=8) as single:
        expected = take(single, 15)
    ranks = [loader(rank=r, world=2, micro=2, global_batch=8) for r in (0, 1)]
    try:
        got = [take(r, 15) for r in ranks]
    finally:
        for r in ranks:
            r.close()
    for step, one in enumerate(expected):
        mine = [torch.cat([mb["input_ids"] for mb in g[step].micro_batches]) for g in got]
        assert torch.equal(torch.cat(mine), torch.cat([mb["input_ids"] for mb in one.micro_batches]))
        positions = [torch.cat([mb["masked_labels"] for mb in g[step].micro_batches]) for g in got]
        assert torch.equal(torch.cat(positions), torch.cat([mb["masked_labels"] for mb in one.micro_batches]))


def test_step_counts_take_every_token_of_a_batch_without_attention_mask():
    unpadded = {
        "input_ids": torch.ones(3, 5, dtype=torch.int64),
        "masked_labels": torch.ones(4, dtype=torch.int64),
    }
    padded = {
        "input_ids": torch.ones(2, 5, dtype=torch.int64),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        "masked_labels": torch.ones(2, dtype=torch.int64),
    }
    assert step_counts([unpadded, padded]).tolist() == [15.0 + 8.0, 6.0, 0.0]


def test_step_counts_of_document_batches_leave_out_the_padding():
    # A model that takes document keys gets no attention_mask: the document ids (0 on padding) or the
    # unpadded token indices tell the tokens in use.
    by_ids = {
        "input_ids": torch.ones(2, 4, dtype=torch.int64),
        "document_ids": torch.tensor([[1, 1, 2, 0], [1, 0, 0, 0]]),
        "masked_labels": torch.ones(1, dtype=torch.int64),
    }
    by_indices = {
        "input_ids": torch.ones(2, 4, dtype=torch.int64),
        "unpad_indices": torch.tensor([0, 1, 4]),
        "masked_labels": torch.ones(1, dtype=torch.int64),
    }
    assert step_counts([by_ids, by_indices]).tolist() == [4.0 + 3.0, 2.0, 0.0]
