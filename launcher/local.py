"""Start the ranks of one node: `python -m pretrain` per rank (env:// rendezvous), or torchrun/deepspeed.

The default "spawn" launcher starts the rank processes itself so that the trainer's exit code survives
(torchrun turns any worker failure, including the preemption code 75, into 1) and so that SIGTERM/SIGUSR1
reach every rank: SLURM's warning signal must make the trainer save, not kill a wrapper.

A rank that dies (any exit but 0 and 75) ends the node in seconds: the other ranks get SIGTERM, and
those still running `kill_grace_s()` seconds later (default 30, env MLM_KILL_GRACE_S) get SIGKILL, since
a rank blocked in a collective with the dead one (NCCL waits for its timeout, minutes) never reaches
the point where it acts on SIGTERM. The node's exit code is the code of the rank that died first, and one
line names that rank.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from launcher.job_config import LaunchError

EXIT_PREEMPTED = 75  # the trainer's documented exit code after a signal-triggered save (docs/architecture.md)
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
KILL_GRACE_ENV = "MLM_KILL_GRACE_S"
DEFAULT_KILL_GRACE_S = 30.0
# For GPU ranks, unless the user's environment sets them: a failed or timed-out NCCL collective ends the
# process (1 = TearDown) instead of blocking it. The same values as pretrain.runtime.distributed's
# NCCL_ERROR_HANDLING (the launcher imports no torch-side module): TORCH_NCCL_* is the current name.
NCCL_ERROR_HANDLING = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_ASYNC_ERROR_HANDLING": "1"}


@dataclass(frozen=True)
class NodeSpec:
    """Where this node sits in the job: ranks per node, node count and rank, the rendezvous address."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rdzv_timeout_s: int = 120
    cpu: bool = False

    @property
    def world_size(self) -> int:
        """Total ranks across all nodes."""
        return self.nproc * self.nnodes


def rank_env(spec: NodeSpec, local_rank: int) -> dict[str, str]:
    """The torch.distributed env:// variables (the ones torchrun sets) for one local rank."""
    env = {
        "RANK": str(spec.node_rank * spec.nproc + local_rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(spec.world_size),
        "LOCAL_WORLD_SIZE": str(spec.nproc),
        "GROUP_RANK": str(spec.node_rank),
        "MASTER_ADDR": spec.master_addr,
        "MASTER_PORT": str(spec.master_port),
    }
    if spec.cpu:
        # DeepSpeed picks its CPU accelerator (gloo backend) from this; one thread per rank on a shared box.
        env.update(
            DS_ACCELERATOR="cpu",
            CUDA_VISIBLE_DEVICES="",
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        )
    else:
        env.update({k: v for k, v in NCCL_ERROR_HANDLING.items() if k not in os.environ})
    return env


def kill_grace_s(environ=None) -> float:
    """Seconds between the SIGTERM to the surviving ranks and their SIGKILL: MLM_KILL_GRACE_S or 30.

    Raises LaunchError for a value that is not a number >= 0."""
    raw = (os.environ if environ is None else environ).get(KILL_GRACE_ENV)
    if raw is None:
        return DEFAULT_KILL_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise LaunchError(f"{KILL_GRACE_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def describe_exit(code: int) -> str:
    """'exited with 1' or 'was killed by SIGKILL' for a Popen return code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def trainer_command(train_args: list[str], module: str = "pretrain") -> list[str]:
    """`python -m pretrain ARGS` with this interpreter (`module` is for tests of the rendezvous alone)."""
    return [sys.executable, "-m", module, *train_args]


def torchrun_command(spec: NodeSpec, train_args: list[str]) -> list[str]:
    """The equivalent torchrun line (static rendezvous, with a timeout instead of a hang)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={spec.nproc}",
        f"--nnodes={spec.nnodes}",
        f"--node-rank={spec.node_rank}",
        f"--master-addr={spec.master_addr}",
        f"--master-port={spec.master_port}",
        f"--rdzv-conf=timeout={spec.rdzv_timeout_s}",
        "-m",
        "pretrain",
        *train_args,
    ]


# What a POSIX shell reads as more than a literal character somewhere in a word: command separators,
# redirections, subshells, expansions, quotes, escapes, history, brace expansion, comments. Glob characters
# (*?[]) are left alone: they can only turn into existing file names, and lists like [data] need them.
_SHELL_SPECIAL = frozenset(";&|<>()$`\\\"'!{}#")


def check_remote_shell_words(train_args: list[str], where: str) -> None:
    """Refuse trainer arguments (and the working directory) that a remote shell would run or re-split.

    DeepSpeed's ssh/pdsh launch joins the working directory and the trainer's arguments into one command
    line for a shell on every host, unquoted (an argument with a space only gets double quotes, inside
    which `$(...)` still runs). Raises LaunchError naming the first such argument.
    """
    words = [("the working directory", os.getcwd())] + [("trainer argument", arg) for arg in train_args]
    for what, word in words:
        bad = sorted({c for c in word if c in _SHELL_SPECIAL or not c.isprintable()})
        if bad:
            raise LaunchError(
                f"{where}: {what} {word!r} holds {''.join(bad)!r}, which the shell DeepSpeed starts on every "
                "host over ssh would run or split; put such values in the config file, or launch each "
                "node with --nnodes/--node-rank (no ssh)"
            )


def deepspeed_command(
    spec: NodeSpec, train_args: list[str], hostfile: str | None = None, master_addr: str | None = None
) -> list[str]:
    """The equivalent deepspeed launcher line; per-node (--no_ssh) when there is more than one node.

    `master_addr` is node 0's address as the user gave it (`--master-addr`), None when not given; only a
    given address becomes `--master_addr`. Left out, DeepSpeed finds the master itself: with a hostfile
    it asks the first host over ssh (`hostname -I`), without one it uses 127.0.0.1. (Passing 127.0.0.1
    with a hostfile would make every remote node dial itself.) Raises LaunchError for a per-node launch
    (nnodes > 1, no ssh) without `master_addr`, which DeepSpeed cannot find without ssh.
    """
    cmd = ["deepspeed"]
    if hostfile:
        cmd += ["--hostfile", hostfile]
        if spec.nnodes == 1:  # DeepSpeed reaches the hosts over ssh/pdsh: every argument meets a shell
            check_remote_shell_words(train_args, f"--launcher deepspeed --hostfile {hostfile}")
    if spec.nnodes > 1:
        if master_addr is None:
            raise LaunchError(
                f"--launcher deepspeed with --nnodes {spec.nnodes} starts each node without ssh, so "
                f"DeepSpeed cannot find the master itself: give --master-addr (node 0's address) everywhere"
            )
        cmd += ["--no_ssh", f"--node_rank={spec.node_rank}", f"--num_nodes={spec.nnodes}"]
    cmd.append(f"--num_gpus={spec.nproc}")
    if master_addr is not None:
        cmd.append(f"--master_addr={master_addr}")
    cmd.append(f"--master_port={spec.master_port}")
    return cmd + ["--module", "pretrain", *train_args]


def wait_for_master(addr: str, port: int, timeout_s: float, stopped=lambda: False) -> None:
    """Poll a TCP connection to the master's rendezvous port until it answers.

    Returns early when `stopped()` turns true (a stop signal arrived). Raises LaunchError after
    `timeout_s` seconds, naming the address: the trainer would block in init_process_group instead.
    """
    deadline = time.monotonic() + timeout_s
    last_error: OSError | None = None
    while time.monotonic() < deadline and not stopped():
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as err:
            last_error = err
            time.sleep(0.5)
    if stopped():
        return
    raise LaunchError(
        f"master {addr}:{port} not reachable after {timeout_s:g} s ({last_error}); start node rank 0 first, "
        f"check --master-addr/--master-port and the firewall, or raise --rdzv-timeout"
    )


def exit_status(code: int) -> int:
    """A Popen return code as a shell reports it: killed by signal N -> 128 + N, else the code."""
    return code if code >= 0 else 128 - code


def combine_exit_codes(codes: list[int]) -> int:
    """One exit code for the node: the first real failure (pass the codes in the order the ranks ended),
    else 75 if any rank was preempted, else 0."""
    failures = [c for c in codes if c not in (0, EXIT_PREEMPTED)]
    if failures:
        return exit_status(failures[0])
    return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else 0


def run_node(
    spec: NodeSpec,
    train_args: list[str],
    echo=print,
    module: str = "pretrain",
    node_name: str | None = None,
    on_failure=None,
) -> int:
    """Start this node's ranks, forward SIGTERM/SIGINT/SIGUSR1 to them, return the combined exit code.

    A rank that fails makes the others stop: SIGTERM at once, SIGKILL to those still running after
    `kill_grace_s()` seconds, so that a crashed job does not hang in a collective; the exit code is then
    the failed rank's, and a line names it (with `node_name`, when given). A failure before any stop
    signal arrived is a cause, not a consequence of stopping: `on_failure(code, what)` is then called once
    with its exit status and `what`, e.g. "rank 3 (local rank 1 on node2) was killed by SIGKILL".

    A stop signal from outside (scancel, preemption) is only forwarded, never escalated to SIGKILL: the
    trainer saves a checkpoint on it, which may take longer than any grace period here, and SLURM's own
    KillWait bounds that wait. Raises LaunchError when a non-zero node rank cannot reach the master, or
    for a bad MLM_KILL_GRACE_S.
    """
    grace_s = kill_grace_s()
    procs: list[subprocess.Popen] = []
    stop_requested: list[int] = []

    def forward(signum, _frame):
        stop_requested.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # Handlers first: a stop signal during the wait for the master must not kill this process.
    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        if spec.node_rank > 0:
            wait_for_master(
                spec.master_addr, spec.master_port, spec.rdzv_timeout_s, lambda: bool(stop_requested)
            )
        if stop_requested:  # stopped before any rank started: nothing to save, the checkpoint is current
            echo(f"stop signal {stop_requested[0]} before the ranks started; exiting {EXIT_PREEMPTED}")
            return EXIT_PREEMPTED
        for local_rank in range(spec.nproc):
            env = rank_env(spec, local_rank)
            cmd = trainer_command(train_args, module)
            echo(" ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(cmd))
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
        ended: list[int] = []  # local ranks, in the order they ended
        kill_at: float | None = None
        while len(ended) < len(procs):
            for i, p in enumerate(procs):
                if i not in ended and p.poll() is not None:
                    ended.append(i)
                    if p.returncode not in (0, EXIT_PREEMPTED) and kill_at is None:
                        rank = spec.node_rank * spec.nproc + i
                        where = f"local rank {i}" + (f" on {node_name}" if node_name else "")
                        what = f"rank {rank} ({where}) {describe_exit(p.returncode)}"
                        others = len(procs) - len(ended)
                        stopping = f"; stopping the other ranks (SIGTERM, SIGKILL after {grace_s:g} s)"
                        echo(f"mlm-launch: {what}" + (stopping if others else ""))
                        if on_failure is not None and not stop_requested:
                            on_failure(exit_status(p.returncode), what)
                        forward(signal.SIGTERM, None)
                        kill_at = time.monotonic() + grace_s
            if kill_at is not None and time.monotonic() >= kill_at:
                alive = [i for i, p in enumerate(procs) if p.poll() is None]
                if alive:
                    echo(f"mlm-launch: local rank(s) {alive} alive {grace_s:g} s after SIGTERM: SIGKILL")
                    for i in alive:
                        procs[i].kill()
                kill_at = float("inf")  # once
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return combine_exit_codes([procs[i].returncode for i in ended])
