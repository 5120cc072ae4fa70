"""mlm-launch: local, per-node and SLURM launches of `python -m pretrain`, hostfiles, preprocessing arrays.

Everything after `--` goes to the trainer (`--config FILE [section.key=value ...]`). Bad requests exit 1
with a message before anything is started or submitted; otherwise the trainer's exit code is returned.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
from pathlib import Path

from launcher.first_failure import FAILURE_FILE_ENV, failure_recorder
from launcher.hostfile import allocation_nodes, check_host, expand_nodelist, read_hostfile, write_hostfile
from launcher.job_config import LaunchError, read_job_config
from launcher.local import NodeSpec, deepspeed_command, run_node, torchrun_command
from launcher.slurm import SlurmOptions, render_train_script, submit
from launcher.slurm_data import render_data_scripts, submit_data_jobs


def _add_node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc", type=int, default=1, help="ranks on this node (GPUs, or CPU processes with --cpu)"
    )
    p.add_argument("--cpu", action="store_true", help="CPU ranks: DeepSpeed's CPU accelerator, gloo backend")
    p.add_argument(
        "--rdzv-timeout", type=int, default=120, help="seconds to wait for the master (default 120)"
    )


def _add_slurm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partition")
    p.add_argument("--time", default="01:00:00", help="time limit per job in the chain (default 01:00:00)")
    p.add_argument("--job-name", default="mlm-pretrain")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument(
        "--container-image", help="run tasks in this image (pyxis/enroot `srun --container-image`)"
    )
    p.add_argument("--container-mounts", help="SRC:DST[,...] for the container (data, run dir, code)")
    p.add_argument("--sbatch-option", action="append", default=[], help="extra `#SBATCH` option, repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the job script(s) instead of submitting")


def build_parser() -> argparse.ArgumentParser:
    """The mlm-launch argument parser (subcommands local, slurm-node, hostfile, slurm, slurm-data)."""
    parser = argparse.ArgumentParser(prog="mlm-launch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser(
        "local", help="run on this machine (or as one node of several: --nnodes/--node-rank)"
    )
    _add_node_args(local)
    local.add_argument("--nnodes", type=int, default=1)
    local.add_argument("--node-rank", type=int, default=0)
    local.add_argument(
        "--master-addr",
        help="node 0's address (default 127.0.0.1; with --launcher deepspeed left to DeepSpeed unless given)",
    )
    local.add_argument("--master-port", type=int, default=29500)
    local.add_argument(
        "--launcher",
        choices=["spawn", "torchrun", "deepspeed"],
        default="spawn",
        help="spawn: start the ranks here (keeps exit code 75); torchrun/deepspeed: run that tool's command",
    )
    local.add_argument("--hostfile", help="DeepSpeed hostfile (with --launcher deepspeed)")

    node = sub.add_parser(
        "slurm-node", help="one node of a SLURM job step (node rank and master from the env)"
    )
    _add_node_args(node)

    hostfile = sub.add_parser(
        "hostfile", help="write a DeepSpeed hostfile from the SLURM allocation or a list"
    )
    hostfile.add_argument("--nodes", help="node list (a,b or node[1-4]); default: $SLURM_JOB_NODELIST")
    hostfile.add_argument("--slots", type=int, default=1, help="ranks (GPUs) per node")
    hostfile.add_argument("--out", default="hostfile")

    slurm = sub.add_parser("slurm", help="submit a self-requeueing training job with sbatch")
    slurm.add_argument("--nodes", type=int, required=True)
    slurm.add_argument(
        "--gpus-per-node", type=int, default=1, help="ranks per node (CPU processes with --cpu)"
    )
    slurm.add_argument("--cpu", action="store_true", help="CPU ranks (CPU clusters, tests)")
    slurm.add_argument(
        "--signal-seconds", type=int, help="warn this long before the time limit (default: auto)"
    )
    slurm.add_argument("--rdzv-timeout", type=int, default=300)
    _add_slurm_args(slurm)

    data = sub.add_parser("slurm-data", help="submit `mlm-data build` as a job array plus a dependent merge")
    data.add_argument("--partitions", type=int, required=True, help="array tasks (input partitions)")
    data.add_argument("--out", required=True, help="the merged shards directory")
    _add_slurm_args(data)
    return parser


def _slurm_options(args: argparse.Namespace) -> SlurmOptions:
    return SlurmOptions(
        partition=args.partition,
        time=args.time,
        job_name=args.job_name,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        container_image=args.container_image,
        container_mounts=args.container_mounts,
        extra_sbatch=args.sbatch_option,
    )


def _run(args: argparse.Namespace, rest: list[str]) -> int:
    if args.command == "hostfile":
        nodes = expand_nodelist(args.nodes) if args.nodes else allocation_nodes()
        print(write_hostfile(nodes, args.slots, Path(args.out)))
        return 0
    if args.command == "slurm-data":
        build, merge = render_data_scripts(_slurm_options(args), args.partitions, Path(args.out), rest)
        if args.dry_run:
            print(build + "\n" + merge)
            return 0
        build_id, merge_id = submit_data_jobs(build, merge)
        print(f"submitted build array {build_id} and merge job {merge_id} (afterok:{build_id})")
        return 0
    if not rest:
        raise LaunchError("no trainer arguments: mlm-launch ... -- --config FILE [key=value ...]")
    if args.command == "slurm":
        script = render_train_script(
            _slurm_options(args),
            args.nodes,
            args.gpus_per_node,
            args.cpu,
            rest,
            args.signal_seconds,
            args.rdzv_timeout,
        )
        if args.dry_run:
            print(script)
            return 0
        print(submit(script))
        return 0
    if args.command == "slurm-node":
        env = os.environ
        spec = NodeSpec(
            nproc=args.nproc,
            nnodes=_env_int("SLURM_NNODES", 1),
            node_rank=_env_int("SLURM_NODEID", 0),
            master_addr=check_host(env.get("MASTER_ADDR", "127.0.0.1"), "$MASTER_ADDR"),
            master_port=_env_int("MASTER_PORT", 29500),
            rdzv_timeout_s=args.rdzv_timeout,
            cpu=args.cpu,
        )

        def echo(line: str) -> None:
            print(f"[node {spec.node_rank}] {line}", flush=True)

        return run_node(
            spec,
            rest,
            echo=echo,
            node_name=env.get("SLURMD_NODENAME") or socket.gethostname(),
            on_failure=failure_recorder(env.get(FAILURE_FILE_ENV), echo),
        )
    if args.master_addr is not None:  # DeepSpeed puts it into the shell command pdsh runs on every node
        check_host(args.master_addr, "--master-addr")
    spec = NodeSpec(
        args.nproc,
        args.nnodes,
        args.node_rank,
        args.master_addr or "127.0.0.1",
        args.master_port,
        args.rdzv_timeout,
        args.cpu,
    )
    job = read_job_config(rest)  # a missing config or a bad global batch fails here, before any rank starts
    job.check_world_size(*_launch_world_size(spec, args.hostfile if args.launcher == "deepspeed" else None))
    if args.launcher == "spawn":
        return run_node(spec, rest, echo=lambda line: print(line, file=sys.stderr, flush=True))
    cmd = (
        torchrun_command(spec, rest)
        if args.launcher == "torchrun"
        else deepspeed_command(spec, rest, args.hostfile, args.master_addr)
    )
    print(shlex.join(cmd), file=sys.stderr, flush=True)
    env = {**os.environ, **({"DS_ACCELERATOR": "cpu"} if args.cpu else {})}
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached: exec replaces this process


def _env_int(name: str, default: int) -> int:
    """The non-negative integer in environment variable `name` (`default` when unset); LaunchError
    naming the variable otherwise (the job script sets these from SLURM's)."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit():
        raise LaunchError(
            f"${name}={value!r} is not a non-negative integer; the job script sets it from SLURM's"
        )
    return int(value)


def _launch_world_size(spec: NodeSpec, hostfile: str | None) -> tuple[int, str]:
    """The world size a local launch starts, and what sets it (for the config check's message).

    With a hostfile and one `--nnodes` (ssh mode), DeepSpeed starts --nproc ranks on every host it lists;
    per node (--nnodes > 1, no ssh) it keeps the first --nnodes hosts, so the file must list that many.
    """
    by_nodes = spec.world_size, f"--nnodes {spec.nnodes} x --nproc {spec.nproc}"
    if hostfile is None:
        return by_nodes
    hosts = read_hostfile(Path(hostfile))
    if spec.nnodes == 1:
        return len(hosts) * spec.nproc, f"{len(hosts)} host(s) in {hostfile} x --nproc {spec.nproc}"
    if len(hosts) < spec.nnodes:
        raise LaunchError(f"{hostfile} lists {len(hosts)} host(s), fewer than --nnodes {spec.nnodes}")
    return by_nodes


def main(argv: list[str] | None = None) -> int:
    """Entry point of mlm-launch; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    try:
        return _run(args, rest)
    except LaunchError as err:
        print(f"mlm-launch: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
