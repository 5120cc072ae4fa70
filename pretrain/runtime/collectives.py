"""The trainer's few small collectives (sums, any-rank flags, the sample-index gather, barriers) and the
one all-reduce that ends every optimizer step.

Why one module: on a GPU run the default backend is NCCL, which moves CUDA tensors only, so a CPU tensor
in a collective raises "No backend type associated with device type cpu". Every tensor sent from here
lives on the device the `Collectives` was given: the ones it makes are created there, the ones a caller
hands in are checked. (The GPU process group also carries a `cpu:gloo` backend, distributed.py, so a
stray CPU tensor could not crash a run either; it would only be slow.) Outside this module nothing in
`pretrain/` calls torch.distributed (tests/pretrain/runtime/test_collectives.py checks it); DeepSpeed
makes its own calls for gradients and its overflow check.

The end of an optimizer step is agreed in ONE all-reduce (`StepAgreement`): the step's sums (losses,
counts, accuracies, summed on the device) and the flags every component raised (non-finite loss,
preemption, out of time, save, ...) travel together and are fetched to the host once. Components raise a
local flag and act on the agreed result; adding a flag is adding its name to `STEP_FLAGS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

STEP_FLAGS: tuple[str, ...] = ("nonfinite", "preempt", "out_of_time", "save", "scale_floor", "error")
"""The flags a rank can raise at the end of an optimizer step; each is agreed per rank (who raised it).

nonfinite: this rank's loss was NaN/Inf (health.py); preempt: it received SIGTERM/SIGUSR1
(signals.py); out_of_time: train.max_minutes passed on its clock; save: its checkpoint schedule
says save (checkpoint.every_minutes depends on the clock); scale_floor: the fp16 loss scale sat at its floor
and the step still overflowed; error: it failed to get the next step's data (its loader raised).
"""


def to_host(tensor: torch.Tensor) -> list:
    """The values of `tensor` as a Python list: the one host sync of a collective's result."""
    return tensor.tolist()


def process_group_size() -> int:
    """The world size of the default process group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_group_rank() -> int:
    """This process's rank in the default process group (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shutdown() -> None:
    """Destroy the default process group if there is one (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Collectives:
    """Small collectives over the default process group, with every tensor on `device`.

    Takes the training device ('cpu', 'cuda:3', a torch.device). In a world of one (or without
    torch.distributed) every method is local and sends nothing. `issued` counts the collectives sent, so
    a run can show how many a step costs (debug.log_collectives).
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        """Remember the device; nothing is sent yet."""
        self.device = torch.device(device)
        self.issued = 0

    @property
    def world_size(self) -> int:
        """Ranks in the default process group."""
        return process_group_size()

    @property
    def rank(self) -> int:
        """This process's rank."""
        return process_group_rank()

    def _check_device(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            raise ValueError(
                f"a collective was handed a tensor on {tensor.device}, but this run's collectives use "
                f"{self.device}; move it there first (an NCCL group cannot send CPU tensors)"
            )

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` (on this device) over all ranks, in place; returns it. No host sync.

        Raises ValueError when `tensor` is on another device.
        """
        self._check_device(tensor)
        if self.world_size > 1:
            self.issued += 1
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """The OR of `flag` over all ranks (every rank must call it; a host sync)."""
        if self.world_size == 1:
            return bool(flag)
        count = torch.full((1,), 1.0 if flag else 0.0, dtype=torch.float32, device=self.device)
        return to_host(self.sum_(count))[0] > 0

    def barrier(self) -> None:
        """Wait until every rank got here (an `any(False)`: the same all-reduce on every backend)."""
        self.any(False)

    def gather_indices(self, indices: np.ndarray) -> list[int]:
        """Every rank's `indices` (int64, the same length on every rank), concatenated in rank order."""
        local = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64)).to(self.device)
        if self.world_size == 1:
            return to_host(local)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        self.issued += 1
        dist.all_gather(parts, local)
        return to_host(torch.cat(parts))


@dataclass
class Agreement:
    """The agreed end of an optimizer step: the sums over all ranks, the extra values fetched with them,
    and for each flag of STEP_FLAGS the ranks that raised it."""

    sums: list[float]
    fetched: list[float]
    raised_by: dict[str, list[int]]

    def any(self, flag: str) -> bool:
        """Whether any rank raised `flag`."""
        return bool(self.raised_by[flag])

    def ranks(self, flag: str) -> list[int]:
        """The ranks that raised `flag`, ascending."""
        return self.raised_by[flag]


class StepAgreement:
    """Agrees the end of each optimizer step in one all-reduce (see the module docstring).

    Takes the `Collectives` to send through and the flag names (default STEP_FLAGS). The vector sent is
    float64 on the training device: the step's sums, then one slot per flag and rank (a rank sets its own
    slot, so the sum names who raised what). At 512 ranks and six flags that is 24 KiB per step.
    """

    def __init__(self, collectives: Collectives, flags: tuple[str, ...] = STEP_FLAGS) -> None:
        """Remember where to send and which flags exist."""
        self.collectives = collectives
        self.flags = flags

    def agree(
        self,
        sums: torch.Tensor,
        raised: Mapping[str, bool | torch.Tensor],
        fetch: torch.Tensor | None = None,
    ) -> Agreement:
        """Sum `sums` and the flags the ranks `raised` over all ranks and fetch them, with `fetch`, in one
        host sync.

        Takes a 1-D tensor of this rank's sums on the training device (the same length on every rank),
        {flag: bool or 0-dim device tensor} (unnamed flags are False) and optionally a 1-D device tensor
        of already-agreed values to bring to the host in the same sync (not summed). Every rank must call
        it once per step. Raises KeyError for a flag not in `flags`, ValueError for a tensor on the wrong
        device.
        """
        device = self.collectives.device
        self.collectives._check_device(sums)
        unknown = sorted(set(raised) - set(self.flags))
        if unknown:
            raise KeyError(f"unknown end-of-step flag(s) {unknown}; known: {list(self.flags)}")
        world, rank = self.collectives.world_size, self.collectives.rank
        slots = torch.zeros(len(self.flags), world, dtype=torch.float64, device=device)
        for i, name in enumerate(self.flags):
            flag = raised.get(name, False)
            if isinstance(flag, torch.Tensor):
                self.collectives._check_device(flag)
                slots[i, rank] = flag.to(torch.float64)  # stays on the device: no sync
            elif flag:
                slots[i, rank] = 1.0
        vector = torch.cat([sums.to(torch.float64).reshape(-1), slots.reshape(-1)])
        self.collectives.sum_(vector)
        extra = torch.zeros(0, dtype=torch.float64, device=device) if fetch is None else fetch
        self.collectives._check_device(extra)
        values = to_host(torch.cat([vector, extra.to(torch.float64).reshape(-1)]))
        n = sums.numel()
        flat = values[n : n + len(self.flags) * world]
        raised_by = {
            name: [r for r in range(world) if flat[i * world + r] > 0] for i, name in enumerate(self.flags)
        }
        return Agreement(values[:n], values[n + len(self.flags) * world :], raised_by)
