"""The sampler under a per-step global batch (batch-size warmup): consecutive positions of the epoch's
order in the step's size, and a rebuilt sampler at a later step continues exactly."""

from __future__ import annotations

import numpy as np

from pretrain.data.sampler import GlobalBatchSampler


def ramp(step: int) -> int:
    return [4, 8, 8, 12][min(step, 3)]


def sampler(first_step=0, rank=0, world=2):
    return GlobalBatchSampler(
        100,
        global_batch_size=12,
        micro_batch_size=2,
        seed=3,
        rank=rank,
        world_size=world,
        global_batch_at=ramp,
        first_step=first_step,
    )


def test_each_step_takes_its_batch_of_consecutive_positions():
    s = sampler()
    steps = [s.next_step() for _ in range(5)]
    assert [len(x.global_batch) for x in steps] == [4, 8, 8, 12, 12]
    assert [len(x.micro_batches) for x in steps] == [1, 2, 2, 3, 3]  # micro 2 x 2 ranks per accumulation
    np.testing.assert_array_equal(np.concatenate([x.global_batch for x in steps]), s.permutation(0)[:44])


def test_a_sampler_rebuilt_at_a_later_step_continues_exactly():
    s = sampler()
    for _ in range(2):
        state = s.next_step().state_after
    resumed = sampler(first_step=2)
    resumed.load_state_dict(state)
    for _ in range(3):
        a, b = s.next_step(), resumed.next_step()
        np.testing.assert_array_equal(a.global_batch, b.global_batch)
        assert [m.tolist() for m in a.micro_batches] == [m.tolist() for m in b.micro_batches]
