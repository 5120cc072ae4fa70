"""Preprocessing on SLURM: `mlm-data build` as a job array over input partitions, then a dependent merge."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

from launcher.job_config import LaunchError
from launcher.slurm import SlurmOptions, render, submit


def mlm_data_command(opts: SlurmOptions) -> str:
    """`mlm-data` as the job runs it: this environment's script, or the one on PATH in a container."""
    if opts.container_image:
        return "mlm-data"
    beside = Path(sys.executable).parent / "mlm-data"
    return str(beside) if beside.exists() else (shutil.which("mlm-data") or "mlm-data")


def partition_paths(out: Path, partitions: int) -> list[Path]:
    """Where array task I writes its partition: OUT.parts/part-0000I (the merge job reads them in order)."""
    parts = out.with_name(out.name + ".parts")
    return [parts / f"part-{i:05d}" for i in range(partitions)]


def render_data_scripts(
    opts: SlurmOptions, partitions: int, out: Path, build_args: list[str]
) -> tuple[str, str]:
    """The array build script and the merge script. LaunchError for a bad partition count or output."""
    if partitions < 1:
        raise LaunchError(f"--partitions must be >= 1, got {partitions}")
    if any(a in ("--out", "--num-partitions", "--partition-index") for a in build_args):
        raise LaunchError("pass --out and --partitions to mlm-launch slurm-data, not after `--`")
    out = Path(out).resolve()
    parts = partition_paths(out, partitions)
    common = {
        "job_name": opts.job_name,
        "time": opts.time,
        "workdir": str(Path.cwd()),
        "log_dir": str(parts[0].parent / "logs"),
        "sbatch_extra": "\n".join(opts.sbatch_lines()),
        "partitions": str(partitions),
        "mlm_data": mlm_data_command(opts),
    }
    build = render(
        "data_build.sbatch",
        {
            **common,
            "last_index": str(partitions - 1),
            "parts_dir": str(parts[0].parent),
            "build_args": shlex.join(build_args),
        },
    )
    merge = render(
        "data_merge.sbatch", {**common, "part_paths": shlex.join(map(str, parts)), "out": str(out)}
    )
    return build, merge


def submit_data_jobs(build_script: str, merge_script: str) -> tuple[str, str]:
    """Submit the array, then the merge with --dependency=afterok on it; return both job ids."""
    build_id = submit(build_script)
    merge_id = submit(merge_script, [f"--dependency=afterok:{build_id}", "--kill-on-invalid-dep=yes"])
    return build_id, merge_id
