"""Process-group setup: one process (world 1), `torchrun -m pretrain` or `deepspeed --module pretrain`.

`prepare_environment()` must run before `deepspeed` is imported: DeepSpeed picks its accelerator at
import time, and on a machine without CUDA it has to be told `DS_ACCELERATOR=cpu` (gloo backend).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, the torch device and the comm backend."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes config, metrics and logs."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_environment() -> bool:
    """Set the environment DeepSpeed and torch.distributed read; returns True when CUDA is used.

    Without CUDA, sets DS_ACCELERATOR=cpu (unless the user chose one). Without a launcher (no RANK /
    WORLD_SIZE in the environment), fills in a world of one on 127.0.0.1 with a free port, so a plain
    `python -m pretrain` works. Call it before importing deepspeed.
    """
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    return on_gpu and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"


def init_distributed(timeout_minutes: float) -> DistInfo:
    """Create the process group (nccl on CUDA, gloo on CPU) and return this process's DistInfo.

    Takes the collective timeout in minutes (a hung peer ends the job instead of hanging forever).
    Raises RuntimeError when the launcher's environment is inconsistent (e.g. RANK >= WORLD_SIZE).
    """
    on_gpu = prepare_environment()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); check the launcher's environment")
    import deepspeed
    import torch

    from pretrain.health import collective_timeout

    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(
        dist_backend=backend,
        timeout=collective_timeout(timeout_minutes),
        verbose=False,
        auto_mpi_discovery=False,
    )
    device = f"cuda:{local_rank}" if on_gpu else "cpu"
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop the `--local_rank=N` the deepspeed launcher appends (LOCAL_RANK is in the environment)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--local_rank", "--local-rank"):
            skip = True
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            continue
        out.append(arg)
    return out
