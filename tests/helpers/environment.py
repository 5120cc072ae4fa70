"""os.environ hygiene for tests that start torch.distributed or the trainer inside the pytest process.

Those write the launcher's variables (LOCAL_RANK for DeepSpeed's engine; RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT from the trainer's `prepare_environment`). Left in os.environ, every process a later test
starts inherits them: a trainer then tries to listen on a port this process holds, accelerate (in
fine-tuning) an env:// rendezvous with no peer.

- `LAUNCHER_VARIABLES`: the variables a launcher sets for each rank (the package's list, re-exported);
- `launcher_variables()`: those of them os.environ holds now;
- `restored_environment()`: a context that puts os.environ back as it found it (tests/conftest.py wraps
  every test in it; a module- or session-scoped fixture that starts a process group wraps itself).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pretrain.runtime.distributed import LAUNCHER_VARIABLES

__all__ = ["LAUNCHER_VARIABLES", "launcher_variables", "restored_environment"]


def launcher_variables() -> dict[str, str]:
    """{name: value} of the LAUNCHER_VARIABLES set in os.environ."""
    return {name: os.environ[name] for name in LAUNCHER_VARIABLES if name in os.environ}


@contextlib.contextmanager
def restored_environment() -> Iterator[None]:
    """Run the body, then put os.environ back as it was on entry (every variable, set or unset)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if os.environ != saved:
            os.environ.clear()
            os.environ.update(saved)
