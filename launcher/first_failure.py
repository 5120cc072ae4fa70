"""The first rank failure of a multi-node job, recorded where the job script reads it.

Under SLURM each node's `mlm-launch slurm-node` sees only its own ranks. When one of them dies, srun
(`--kill-on-bad-exit`) stops every other node's task, and those, killed, make srun's exit code the
highest of all tasks (137 for the SIGKILL after KillWait), not the dead rank's. So the node launcher that
saw the failure first writes one line, `CODE WHAT`, to the file the job script names in
`$MLM_FAILURE_FILE` (in the job's log directory, on the filesystem all nodes share); the job script
reports that line and exits with CODE (launcher/templates/train.sbatch).
"""

from __future__ import annotations

import os
import socket

FAILURE_FILE_ENV = "MLM_FAILURE_FILE"


def record_first_failure(path: str, code: int, what: str) -> bool:
    """Write `CODE WHAT` to `path` unless a record is there already; True if this one was written.

    The record appears whole or not at all (written aside, then hard-linked into place, which fails if
    another node got there first), so the first node launcher to fail wins and the job script never
    reads half a line. Raises OSError when the directory cannot be written, or when something already
    stands at the aside name (opened exclusively: a planted link there is never written through).
    """
    aside = f"{path}.{socket.gethostname()}.{os.getpid()}"
    with open(aside, "x", encoding="utf-8") as f:
        f.write(f"{code} {what}\n")
    try:
        os.link(aside, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(aside)
    return True


def failure_recorder(path: str | None, echo):
    """`run_node`'s `on_failure` for a job script that named `path` (None: nothing to record).

    A record that cannot be written is one line on `echo`, not an error: the node must still stop its
    ranks, and the job then fails with srun's exit code instead of the dead rank's.
    """
    if not path:
        return None

    def record(code: int, what: str) -> None:
        try:
            record_first_failure(path, code, what)
        except OSError as err:
            echo(
                f"mlm-launch: cannot record the failure in {path} ({err}); the job's exit code may be srun's"
            )

    return record
