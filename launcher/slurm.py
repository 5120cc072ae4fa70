"""Render SLURM job scripts from launcher/templates/ and submit them with sbatch."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launcher.job_config import LaunchError, read_job_config

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class SlurmOptions:
    """Scheduler settings shared by training and preprocessing jobs."""

    partition: str | None = None
    time: str = "01:00:00"
    job_name: str = "mlm-pretrain"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    container_image: str | None = None
    container_mounts: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)

    def sbatch_lines(self) -> list[str]:
        """`#SBATCH` lines for the optional settings."""
        pairs = [("partition", self.partition), ("account", self.account), ("qos", self.qos)]
        pairs.append(("constraint", self.constraint))
        lines = [f"#SBATCH --{key}={value}" for key, value in pairs if value]
        return lines + [f"#SBATCH {opt}" for opt in self.extra_sbatch]

    def srun_args(self) -> list[str]:
        """srun flags: the container image and mounts for pyxis/enroot clusters."""
        if not self.container_image:
            return []
        mounts = [f"--container-mounts={self.container_mounts}"] if self.container_mounts else []
        return [
            f"--container-image={self.container_image}",
            *mounts,
            "--container-workdir=" + str(Path.cwd()),
        ]


def render(template: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders of launcher/templates/<template>; raise LaunchError on an unfilled one."""
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    missing = sorted(set(re.findall(r"{{(\w+)}}", text)))
    if missing:
        raise LaunchError(f"template {template}: no value for {', '.join(missing)}")
    return text


def parse_time_seconds(limit: str) -> int:
    """Seconds in a SLURM time limit (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH[:MM[:SS]]`); LaunchError if bad."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit.strip())
    if not match:
        raise LaunchError(f"--time {limit!r} is not a SLURM time limit (e.g. 30, 04:00:00 or 2-00:00:00)")
    days, a, b, c = (int(x) if x else None for x in match.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)


def python_for_job(opts: SlurmOptions) -> str:
    """The job's interpreter: this one (same venv on a shared filesystem), or `python` in a container."""
    return "python" if opts.container_image else sys.executable


def render_train_script(
    opts: SlurmOptions,
    nodes: int,
    ranks_per_node: int,
    cpu: bool,
    train_args: list[str],
    signal_seconds: int | None = None,
    rdzv_timeout_s: int = 300,
) -> str:
    """The sbatch script for a training job. Checks the config and the batch arithmetic first.

    Raises LaunchError for a missing config, a world size the config's global batch rejects, or a
    warning time that does not fit the time limit.
    """
    if nodes < 1 or ranks_per_node < 1:
        raise LaunchError(f"--nodes ({nodes}) and --gpus-per-node ({ranks_per_node}) must be >= 1")
    job = read_job_config(train_args)
    job.check_world_size(nodes * ranks_per_node, f"--nodes {nodes} x --gpus-per-node {ranks_per_node}")
    limit = parse_time_seconds(opts.time)
    if signal_seconds is None:  # enough to save a checkpoint, but never most of a short job
        signal_seconds = max(10, min(300, limit // 10))
    if signal_seconds >= limit:
        raise LaunchError(f"--signal-seconds {signal_seconds} must be below the time limit ({limit} s)")
    sbatch = opts.sbatch_lines() + ([] if cpu else [f"#SBATCH --gpus-per-node={ranks_per_node}"])
    node_cmd = [python_for_job(opts), "-m", "launcher", "slurm-node", "--nproc", str(ranks_per_node)]
    node_cmd += ["--cpu"] if cpu else []
    node_cmd += ["--rdzv-timeout", str(rdzv_timeout_s), "--", *train_args, "train.resume=auto"]
    workdir = Path.cwd()
    return render(
        "train.sbatch",
        {
            "job_name": opts.job_name,
            "nodes": str(nodes),
            "time": opts.time,
            "signal_seconds": str(signal_seconds),
            "workdir": str(workdir),
            "log_dir": str(log_dir_for(job.run_dir, workdir)),
            "sbatch_extra": "\n".join(sbatch),
            "srun_extra": shlex.join(opts.srun_args()),
            "node_command": shlex.join(node_cmd),
        },
    )


def log_dir_for(run_dir: str, workdir: Path) -> Path:
    """Per-job logs go next to the run dir: RUN_DIR/slurm/ (absolute, as sbatch needs)."""
    return (workdir / run_dir / "slurm").resolve()


def sbatch_path() -> str:
    """The sbatch executable; LaunchError if it is not on PATH (nothing is submitted then)."""
    path = shutil.which("sbatch")
    if path is None:
        raise LaunchError("sbatch not found on PATH: run this on a SLURM login node, or use --dry-run")
    return path


def submit(script: str, extra_args: list[str] | None = None) -> str:
    """Submit a job script with `sbatch --parsable`; return the job id. LaunchError if sbatch refuses it."""
    sbatch = sbatch_path()
    log_dirs = re.findall(r"^#SBATCH --output=(.+)/[^/]+$", script, flags=re.MULTILINE)
    for directory in log_dirs:  # sbatch does not create it, and the job would fail without a trace
        Path(directory).mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sbatch, "--parsable", *(extra_args or [])],
        input=script,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    if out.returncode != 0:
        raise LaunchError(f"sbatch refused the job (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]
