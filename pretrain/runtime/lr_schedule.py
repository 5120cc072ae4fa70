"""The learning-rate schedule: a pure function of the optimizer step (nothing of it is checkpointed).

A run's schedule is one or more segments. Without phases there is one, steps [0, train.max_steps). A
phase that sets `optim` keys starts a new segment at its start_step that lasts until the next such phase
(or train.max_steps): its warmup, stable part and decay count from the segment's start, and its peak
is that phase's optim.lr. A phase without `optim` keys continues the segment it falls in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pretrain.config import OptimConfig
from pretrain.config.phases import Segment


def _decay_shape(shape: str, progress: float) -> float:
    """1 at progress 0 down to 0 at progress 1, in the named shape."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "polynomial":
        return (1.0 - progress) ** 2
    return 1.0 - math.sqrt(progress)  # "1-sqrt"


def lr_factor(step: int, optim_cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of optim.lr for the update after `step` completed updates of a segment of `max_steps`.

    Linear warmup to 1 over warmup_steps, then: linear, cosine or polynomial (power 2) decay to
    min_lr_ratio at max_steps; constant; or wsd: stable at 1, then the last decay steps in decay_shape
    down to min_lr_ratio at max_steps.
    """
    o = optim_cfg
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "wsd":
        decay = o.decay_length(max_steps)
        start = max_steps - decay
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / decay)
        shape = _decay_shape(o.decay_shape, progress)
    else:
        progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
        shape = _decay_shape(o.schedule, progress)
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


def phased_schedule(segments: list[Segment]) -> Callable[[int], float]:
    """The multiplier of the run's optim.lr at each step over its segments (see the module docstring):
    a function of the step, the factor LambdaLR multiplies optim.lr by.

    Takes the segments in order (`pretrain.config.phases.lr_segments`: the first starting at 0, each
    ending where the next starts). A plain function, not an object: LambdaLR's state_dict saves the
    attributes of callable objects into the checkpoint, which a weights-only load refuses.
    """

    def factor(step: int) -> float:
        seg = next((s for s in reversed(segments) if step >= s.start), segments[0])
        return seg.scale * lr_factor(step - seg.start, seg.optim, seg.end - seg.start)

    return factor
