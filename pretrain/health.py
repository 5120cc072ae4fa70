"""Run health: non-finite loss detection and skip policy, and the collective timeout that ends hung jobs."""

from __future__ import annotations

import datetime
import logging
import math
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """More consecutive non-finite losses than the policy allows: the run stops (exit 1) and keeps the
    last good checkpoint."""


class NonFiniteMonitor:
    """Detects a NaN/Inf loss on any rank, names the rank(s) and applies the skip policy.

    Takes the number of consecutive bad steps to skip before giving up (`max_consecutive_skips`; 0 stops
    at the first), this rank and the world size. `check(loss, step)` is a collective (every rank calls it
    once per optimizer step, with the loss it is about to back-propagate): it returns True for a good
    step, False for a step the trainer must skip (no backward, no optimizer update), and raises
    NonFiniteLossError when the bad streak exceeds the policy. `state_dict()` (JSON ints) goes into the
    trainer state so the counts survive a resume.
    """

    def __init__(self, max_consecutive_skips: int, *, rank: int = 0, world_size: int = 1) -> None:
        """Start with zero bad steps."""
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.max_consecutive_skips = max_consecutive_skips
        self.rank = rank
        self.world_size = world_size
        self.consecutive = 0
        self.total_skipped = 0

    def bad_ranks(self, loss: torch.Tensor | float) -> list[int]:
        """The ranks whose `loss` is NaN or Inf (collective when distributed; [] when all are finite)."""
        value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
        flags = torch.zeros(self.world_size, dtype=torch.int32)
        flags[self.rank] = 0 if math.isfinite(value) else 1
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        return [r for r in range(self.world_size) if flags[r]]

    def check(self, loss: torch.Tensor | float, step: int) -> bool:
        """True: train on this step. False: skip it. Raises NonFiniteLossError past the policy."""
        bad = self.bad_ranks(loss)
        if not bad:
            self.consecutive = 0
            return True
        self.consecutive += 1
        if self.consecutive > self.max_consecutive_skips:
            raise NonFiniteLossError(
                f"non-finite loss at step {step} on rank(s) {bad}: {self.consecutive} bad step(s) in a row, "
                f"more than the {self.max_consecutive_skips} allowed; stopping. The last good checkpoint is "
                f"kept: lower optim.lr, raise optim.warmup_steps or use bf16 before resuming"
            )
        self.total_skipped += 1
        if self.rank == 0:
            log.warning(
                "non-finite loss at step %d on rank(s) %s: step skipped (%d in a row, %d allowed, %d total)",
                step,
                bad,
                self.consecutive,
                self.max_consecutive_skips,
                self.total_skipped,
            )
        return False

    def state_dict(self) -> dict:
        """{'consecutive', 'total_skipped'}: JSON ints for the trainer state."""
        return {"consecutive": self.consecutive, "total_skipped": self.total_skipped}

    def load_state_dict(self, state: dict) -> None:
        """Restore the counts saved by state_dict()."""
        self.consecutive = int(state["consecutive"])
        self.total_skipped = int(state["total_skipped"])


class Stage0StepGuard:
    """Gives a plain torch optimizer (ZeRO-0 fp32, where DeepSpeed uses it as is) the overflow behaviour
    of DeepSpeed's ZeRO and bf16 optimizers: a step whose gradient norm is not finite updates nothing.

    Takes the engine's optimizer. Call `check(model)` after the last backward of an optimizer step and
    before `engine.step()`; it returns the global gradient norm. When the norm is NaN/Inf, a step
    pre-hook removes the gradients just before the update (torch optimizers leave a parameter without
    a gradient untouched: no update, no weight decay, no moment change), and the `overflow` attribute
    DeepSpeed reads after the step makes it count `skipped_steps` and hold the LR schedule, as it does
    for its own optimizers. Clipping runs before the hook, so it still sees the gradients.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        """Attach to `optimizer` (a torch.optim.Optimizer)."""
        self.optimizer = optimizer
        optimizer.overflow = False
        optimizer.register_step_pre_hook(self._drop_gradients_if_overflow)

    def check(self, model: torch.nn.Module) -> float:
        """The global norm of `model`'s gradients (every rank holds the whole, averaged gradients under
        ZeRO-0, so all ranks agree); marks the coming step as skipped when it is not finite."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.optimizer.overflow = not math.isfinite(norm)
        return norm

    @staticmethod
    def _drop_gradients_if_overflow(optimizer, args, kwargs) -> None:
        if optimizer.overflow:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None


def collective_timeout(minutes: float) -> datetime.timedelta:
    """The process-group timeout for `minutes` (> 0), for `deepspeed.init_distributed(timeout=...)`.

    Also turns on NCCL's asynchronous error handling (where the user did not choose otherwise) so a hung
    collective or a dead peer raises in every rank after the timeout instead of blocking forever; gloo
    honours the timeout by itself. Raises ValueError for minutes <= 0.
    """
    if minutes <= 0:
        raise ValueError(f"the collective timeout must be > 0 minutes, got {minutes}")
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    return datetime.timedelta(minutes=minutes)
