"""Helpers shared by test modules (conftest.py files keep only fixtures).

- `tests.helpers.free_port()` (here): an unused local TCP port for a rendezvous.
- `tests.helpers.runs`: the `mlm-data` CLI, small training configs and `python -m pretrain` runs under
  torchrun or deepspeed, their metrics and step traces.
- `tests.helpers.processes`: a trainer started in the background, waited on, and SIGKILLed with its ranks.
- `tests.helpers.rows`: shard-schema rows in memory and a reader with ShardReader's API.
- `tests.helpers.engine`: a real tiny DeepSpeed engine on CPU (gloo) and its process group.
- `tests.helpers.slurm`: watching the jobs of the local SLURM cluster (scripts/local_slurm.sh).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """An unused local TCP port (bound once to 127.0.0.1:0, then released) for a process group rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
