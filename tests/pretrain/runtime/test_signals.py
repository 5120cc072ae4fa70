"""PreemptionHandler with real signals: local flag, agreement across two real ranks, no harm during a save."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from pretrain.checkpoint.manager import CheckpointManager
from pretrain.checkpoint.record import validate_checkpoint
from pretrain.runtime.collectives import Collectives, StepAgreement
from pretrain.runtime.signals import EXIT_PREEMPTED, PreemptionHandler
from tests.helpers import free_port
from tests.helpers.engine import init_process_group, make_engine, train_steps


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    with PreemptionHandler() as handler:
        assert not handler.requested and not handler.agreed(handler.requested)
        os.kill(os.getpid(), sig)
        assert handler.requested and handler.agreed(handler.requested) and handler.received == sig
    assert signal.getsignal(sig) == before
    assert EXIT_PREEMPTED == 75


def _agree_worker(rank: int, port: int, results) -> None:
    init_process_group(rank, 2, port)
    agreement = StepAgreement(Collectives("cpu"))
    with PreemptionHandler() as handler:
        for step in range(1, 20):
            if rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled
            agreed = agreement.agree(torch.zeros(0), {"preempt": handler.requested})
            if handler.agreed(agreed.any("preempt")):
                results[rank] = (step, agreed.ranks("preempt"))
                return


def test_all_ranks_stop_at_the_same_step():
    results = mp.Manager().dict()
    mp.spawn(_agree_worker, args=(free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: (3, [1]), 1: (3, [1])}


def test_signals_during_a_save_do_not_interrupt_it(tmp_path):
    init_process_group()
    engine = make_engine(stage=2)
    train_steps(engine, 0, 2)
    cfg = SimpleNamespace(every_steps=1, every_minutes=None, keep_last=3, keep_every=None)
    mgr = CheckpointManager(str(tmp_path), cfg, rank=0, world_size=1, config_hash="h")
    done = threading.Event()

    def pester():  # signals keep arriving while the main thread is saving
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.001)

    with PreemptionHandler() as handler:
        thread = threading.Thread(target=pester)
        thread.start()
        try:
            tag_dir = mgr.save(engine, {"step": 2}, 2)
        finally:
            done.set()
            thread.join()
    assert handler.count >= 2 and handler.requested
    assert validate_checkpoint(tag_dir)["step"] == 2
