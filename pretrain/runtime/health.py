"""Run health: non-finite loss detection and skip policy, the fp16 loss-scale floor, and the collective
timeout that ends hung jobs.

How the loop (pretrain/trainer.py) uses it, per optimizer step: `train_step` runs every forward,
backward and the update, then states `NonFiniteMonitor.is_bad` of its summed loss as a device tensor
(no host sync); the optimizers have already dropped a non-finite update themselves (DeepSpeed's overflow
check, `Stage0StepGuard` for ZeRO-0 fp32). The end-of-step agreement carries every rank's flags, and
`NonFiniteMonitor.update` then counts the agreed bad ranks and raises past the policy, before the step's
metrics record, eval or save. Nothing here decides whether a step runs or is skipped."""

from __future__ import annotations

import datetime
import logging
import math
import os

import torch

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """More consecutive non-finite losses than the policy allows: the run stops (exit 1) and keeps the
    last good checkpoint."""


class PeerFailedError(RuntimeError):
    """Another rank failed (its error is in its log) and every rank stops with it (exit 1)."""


class LossScaleFloorError(NonFiniteLossError):
    """An fp16 step overflowed with the loss scale already at fp16.min_loss_scale: the run stops (exit 1)
    and keeps the last good checkpoint."""


class NonFiniteMonitor:
    """Applies the skip policy to NaN/Inf losses and names the rank(s) that had them.

    Takes the number of consecutive bad steps to skip before giving up (`max_consecutive_skips`; 0 stops
    at the first) and this rank. Each rank raises its flag with `is_bad(loss)` (a device tensor, no host
    sync); the trainer agrees the flags of all ranks at the end of the step (pretrain/runtime/collectives.py)
    and hands the ranks that had a bad loss to `update`, which counts and raises. The bad step's update
    itself is dropped by the optimizers (DeepSpeed's overflow check, Stage0StepGuard). An fp16 overflow
    with a finite loss is DeepSpeed's loss scaling at work, not a bad loss. `state_dict()` (JSON ints)
    goes into the trainer state so the counts survive a resume.
    """

    def __init__(self, max_consecutive_skips: int, *, rank: int = 0) -> None:
        """Start with zero bad steps."""
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.max_consecutive_skips = max_consecutive_skips
        self.rank = rank
        self.consecutive = 0
        self.total_skipped = 0

    @staticmethod
    def is_bad(loss: torch.Tensor) -> torch.Tensor:
        """A 0-dim bool tensor on `loss`'s device: whether any element of `loss` is NaN or Inf."""
        return ~torch.isfinite(loss.detach()).all()

    def update(self, bad_ranks: list[int], step: int) -> bool:
        """Count the agreed `bad_ranks` of `step` (after its update was dropped): True for a good step,
        False for a bad one within the policy (logged and counted as skipped; nothing for the caller to
        undo). Raises NonFiniteLossError (on every rank alike) when the bad streak exceeds the policy."""
        if not bad_ranks:
            self.consecutive = 0
            return True
        bad = list(bad_ranks)
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
