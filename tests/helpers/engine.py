"""A real tiny DeepSpeed engine on CPU (gloo) for the checkpoint/health/signal tests."""

from __future__ import annotations

import os

import torch

from tests.helpers import free_port


def init_process_group(rank: int = 0, world_size: int = 1, port: int | None = None) -> None:
    """Initialise torch.distributed (gloo on CPU) via DeepSpeed, once per process."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import torch.distributed as dist

    from pretrain.runtime.distributed import skip_cpu_inference_comm_op

    # DeepSpeed's engine insists on LOCAL_RANK. tests/conftest.py resets os.environ after each test; a
    # module-scoped fixture that calls this wraps itself in tests.helpers.environment.restored_environment.
    os.environ["LOCAL_RANK"] = str(rank)
    if dist.is_initialized():
        return
    skip_cpu_inference_comm_op()  # as the trainer does: no op compile in a fresh venv
    # The rendezvous goes in init_method, not in MASTER_PORT & co.: this process keeps the group (and
    # its port) for the rest of the session, and trainer subprocesses started later inherit os.environ.
    deepspeed.init_distributed(
        dist_backend="gloo",
        auto_mpi_discovery=False,
        init_method=f"tcp://127.0.0.1:{port or free_port()}",
        rank=rank,
        world_size=world_size,
    )


class TinyNet(torch.nn.Module):
    """Two linear layers with dropout (so the RNG state matters for exact resume)."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        self.drop = torch.nn.Dropout(dropout)
        self.b = torch.nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.relu(self.a(x))))


GLOBAL_BATCH = 8


def make_engine(
    stage: int = 0,
    seed: int = 0,
    dtype: str = "fp32",
    world_size: int = 1,
    dropout: float = 0.3,
    schedule=None,
):
    """A DeepSpeed engine over TinyNet with torch AdamW (lr 1e-2) and a LambdaLR schedule (`schedule`,
    a function of the step; default 1 / (1 + step)), global batch 8."""
    import deepspeed

    torch.manual_seed(seed)
    model = TinyNet(dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule or (lambda s: 1.0 / (1 + s)))
    config = {
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": GLOBAL_BATCH,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": dtype == "bf16"},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config)
    return engine


def train_steps(engine, first_step: int, n: int, rank: int = 0, world_size: int = 1) -> list[float]:
    """Run n optimizer steps on global batches that are a pure function of the step (this rank takes its
    contiguous slice); returns this rank's losses."""
    losses = []
    dtype = next(engine.module.parameters()).dtype
    per_rank = GLOBAL_BATCH // world_size
    for step in range(first_step, first_step + n):
        g = torch.Generator().manual_seed(1000 * step)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        x = torch.randn(GLOBAL_BATCH, 8, generator=g)[mine].to(dtype)
        y = torch.randn(GLOBAL_BATCH, 1, generator=g)[mine].to(dtype)
        loss = torch.nn.functional.mse_loss(engine(x).float(), y.float())
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses
