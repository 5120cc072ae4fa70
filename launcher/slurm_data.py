"""Preprocessing on SLURM: `mlm-data build` as a job array over input partitions, then a dependent merge."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from launcher.job_config import LaunchError
from launcher.slurm import (
    SlurmOptions,
    output_pattern,
    parse_time_seconds,
    render,
    sbatch_quote,
    shell_join,
    shell_quote,
    submit,
)


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
    parse_time_seconds(opts.time)  # a bad limit fails here, not at sbatch
    log_dir = parts[0].parent / "logs"
    workdir = sbatch_quote(str(Path.cwd()), "the working directory")
    common = {
        "time": sbatch_quote(opts.time, "--time"),
        "workdir": workdir,
        "sbatch_extra": "\n".join(opts.sbatch_lines()),
        "partitions": str(partitions),
        "mlm_data": shell_quote(mlm_data_command(opts), "the mlm-data path"),
    }
    build = render(
        "data_build.sbatch",
        {
            **common,
            "job_name": sbatch_quote(opts.job_name + "-build", "--job-name"),
            "output": sbatch_quote(output_pattern(log_dir, "%x-%A_%a.out"), "--out"),
            "last_index": str(partitions - 1),
            "parts_dir": shell_quote(str(parts[0].parent), "--out"),
            "build_args": shell_join(build_args, "a build argument"),
        },
    )
    merge = render(
        "data_merge.sbatch",
        {
            **common,
            "job_name": sbatch_quote(opts.job_name + "-merge", "--job-name"),
            "output": sbatch_quote(output_pattern(log_dir, "%x-%j.out"), "--out"),
            "part_paths": shell_join([str(p) for p in parts], "--out"),
            "out": shell_quote(str(out), "--out"),
        },
    )
    return build, merge


def submit_data_jobs(build_script: str, merge_script: str) -> tuple[str, str]:
    """Submit the array, then the merge with --dependency=afterok on it; return both job ids."""
    build_id = submit(build_script)
    merge_id = submit(merge_script, [f"--dependency=afterok:{build_id}", "--kill-on-invalid-dep=yes"])
    return build_id, merge_id
