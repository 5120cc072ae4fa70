"""NonFiniteMonitor: detection at the step, the rank named, the skip policy, counts across resume."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.multiprocessing as mp

from pretrain.runtime.collectives import Collectives, StepAgreement
from pretrain.runtime.health import NonFiniteLossError, NonFiniteMonitor, collective_timeout
from tests.helpers import free_port
from tests.helpers.engine import init_process_group


def bad(value: float) -> list[int]:
    """The agreed bad ranks of a world of one whose loss is `value`."""
    return [0] if NonFiniteMonitor.is_bad(torch.tensor(value)) else []


def test_skips_up_to_k_then_stops():
    monitor = NonFiniteMonitor(2)
    assert monitor.update(bad(1.5), 1)
    assert not monitor.update(bad(float("nan")), 2)
    assert not monitor.update(bad(float("inf")), 3)
    with pytest.raises(NonFiniteLossError, match=r"step 4 on rank\(s\) \[0\].*3 bad step\(s\) in a row"):
        monitor.update(bad(float("nan")), 4)


def test_a_good_step_resets_the_streak_and_counts_survive_resume():
    monitor = NonFiniteMonitor(1)
    assert not monitor.update(bad(float("nan")), 1)
    assert monitor.update(bad(0.5), 2)
    assert not monitor.update(bad(float("-inf")), 3)
    resumed = NonFiniteMonitor(1)
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.state_dict() == {"consecutive": 1, "total_skipped": 2}
    with pytest.raises(NonFiniteLossError):
        resumed.update(bad(float("nan")), 4)


def _nan_worker(rank: int, port: int, results) -> None:
    init_process_group(rank, 2, port)
    monitor = NonFiniteMonitor(0, rank=rank)
    agreement = StepAgreement(Collectives("cpu"))
    for step in range(1, 6):
        loss = torch.tensor(float("nan") if (rank == 1 and step == 4) else 1.0)
        agreed = agreement.agree(loss.reshape(1), {"nonfinite": NonFiniteMonitor.is_bad(loss)})
        try:
            monitor.update(agreed.ranks("nonfinite"), step)
        except NonFiniteLossError as e:
            results[rank] = str(e)
            return
    results[rank] = "no error"


def test_nan_on_one_rank_stops_all_ranks_naming_it():
    results = mp.Manager().dict()
    mp.spawn(_nan_worker, args=(free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        assert "non-finite loss at step 4 on rank(s) [1]" in results[rank]


def test_collective_timeout():
    assert collective_timeout(1.5) == datetime.timedelta(seconds=90)
    with pytest.raises(ValueError, match="> 0"):
        collective_timeout(0)
