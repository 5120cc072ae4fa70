"""Helpers shared by test modules (conftest.py files keep only fixtures).

- `tests.helpers.free_port()`: the package's `pretrain.runtime.distributed.free_port`, re-exported.
- `tests.helpers.runs`: the `mlm-data` CLI, small training configs and `python -m pretrain` runs under
  torchrun or deepspeed, their metrics and step traces.
- `tests.helpers.processes`: a trainer started in the background, waited on, and SIGKILLed with its ranks;
  `sigkill_then_resume`, the kill at a random step and the resume that exact-resume tests compare.
- `tests.helpers.rows`: shard-schema rows in memory and a reader with ShardReader's API.
- `tests.helpers.engine`: a real tiny DeepSpeed engine on CPU (gloo) and its process group.
- `tests.helpers.environment`: the launcher's variables, and os.environ put back after a test or fixture.
- `tests.helpers.tasks`: a small labelled task (three families of the sample task) for fine-tuning.
- `tests.helpers.slurm`: watching the jobs of the local SLURM cluster (scripts/local_slurm.sh).
"""

from __future__ import annotations

from pretrain.runtime.distributed import free_port

__all__ = ["free_port"]
