"""pretrain/runtime/collectives.py: the backend choice, tensors on the training device, the one end-of-step
agreement over two real ranks, and that nothing else in pretrain/ talks to torch.distributed."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pretrain.runtime import collectives
from pretrain.runtime.collectives import STEP_FLAGS, Collectives, StepAgreement
from pretrain.runtime.distributed import process_group_backend
from tests.helpers import free_port
from tests.helpers.engine import init_process_group
from tests.helpers.paths import REPO

PRETRAIN = REPO / "pretrain"
COLLECTIVES = PRETRAIN / "runtime" / "collectives.py"


def test_a_gpu_run_gives_cpu_tensors_to_gloo_and_cuda_tensors_to_nccl():
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    backend = process_group_backend(on_gpu=True)
    assert backend == "cuda:nccl,cpu:gloo"
    assert BackendConfig(Backend(backend)).get_device_backend_map() == {"cuda": "nccl", "cpu": "gloo"}
    assert process_group_backend(on_gpu=False) == "gloo"


class RecordingDist:
    """Stands in for torch.distributed in a world of 4 and records the device of every tensor sent."""

    class ReduceOp:
        SUM = "sum"

    def __init__(self) -> None:
        self.sent: list[tuple[str, torch.device]] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 4

    def get_rank(self) -> int:
        return 2

    def all_reduce(self, tensor, op=None) -> None:
        self.sent.append(("all_reduce", tensor.device))

    def all_gather(self, parts, tensor) -> None:
        self.sent.append(("all_gather", tensor.device))
        self.sent.extend(("all_gather", p.device) for p in parts)


def test_every_tensor_sent_is_on_the_device_the_module_was_given(monkeypatch):
    # "meta" stands for a GPU here: any tensor made on the CPU by mistake would show up as cpu.
    fake = RecordingDist()
    monkeypatch.setattr(collectives, "dist", fake)
    monkeypatch.setattr(collectives, "to_host", lambda t: [0.0] * t.numel())
    device = torch.device("meta")
    comm = Collectives(device)
    comm.sum_(torch.zeros(3, device=device))
    comm.any(True)
    comm.barrier()
    comm.gather_indices(np.arange(5))
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    bad = torch.isnan(torch.zeros((), device=device))
    StepAgreement(comm).agree(sums, {"nonfinite": bad, "save": True}, fetch=torch.ones(2, device=device))
    assert len(fake.sent) >= 5 and comm.issued == 5
    assert {d for _, d in fake.sent} == {device}
    with pytest.raises(ValueError, match="tensor on cpu.*use meta"):
        comm.sum_(torch.zeros(3))
    with pytest.raises(KeyError, match="unknown end-of-step flag"):
        StepAgreement(comm).agree(sums, {"svae": True})


def _agreement_worker(rank: int, port: int, results) -> None:
    init_process_group(rank, 2, port)
    comm = Collectives("cpu")
    agreement = StepAgreement(comm)
    sums = torch.tensor([1.5, 10.0 * (rank + 1)], dtype=torch.float64)
    raised = {"nonfinite": torch.tensor(rank == 1), "save": rank == 0, "preempt": False}
    agreed = agreement.agree(sums, raised, fetch=torch.tensor([7.0 + rank]))
    results[rank] = (
        agreed.sums,
        agreed.fetched,
        {f: agreed.ranks(f) for f in STEP_FLAGS},
        comm.any(rank == 1),
        comm.gather_indices(np.array([rank, rank + 10])),
        comm.issued,
    )


def test_two_ranks_agree_sums_and_flags_in_one_all_reduce():
    results = mp.Manager().dict()
    mp.spawn(_agreement_worker, args=(free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        sums, fetched, raised_by, any_flag, gathered, issued = results[rank]
        assert sums == [3.0, 30.0] and fetched == [7.0 + rank]  # summed; fetched as they were
        assert raised_by == {**{f: [] for f in STEP_FLAGS}, "nonfinite": [1], "save": [0]}
        assert any_flag and gathered == [0, 10, 1, 11]
        assert issued == 3  # agreement, any, gather


def _calls_into_torch_distributed(path: Path) -> list[str]:
    """Lines of `path` that import or use torch.distributed or deepspeed.comm."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [ast.unparse(node)]
        if any(n.startswith(("torch.distributed", "deepspeed.comm")) for n in names):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_other_module_in_pretrain_calls_torch_distributed():
    offenders = [
        hit
        for path in sorted(PRETRAIN.rglob("*.py"))
        if path != COLLECTIVES
        for hit in _calls_into_torch_distributed(path)
    ]
    assert offenders == [], f"collectives outside pretrain/runtime/collectives.py: {offenders}"
    assert _calls_into_torch_distributed(COLLECTIVES)  # the scan does see them
