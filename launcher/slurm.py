"""Render SLURM job scripts from launcher/templates/ and submit them with sbatch."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from launcher.job_config import LaunchError, read_job_config

TEMPLATES = Path(__file__).parent / "templates"


# Characters an `#SBATCH` argument or a shell word may hold unquoted (ASCII only, no quote, `#`, `\\`).
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# sbatch splits a script into heterogeneous-job components wherever a #SBATCH line mentions these.
_SBATCH_SPLITTERS = ("hetjob", "packjob")


def line_break(text: str) -> str | None:
    """The first character of `text` that `str.splitlines()` ends a line at, or None.

    Asks splitlines itself rather than a list of characters, so the rule is every break it knows
    (newline, carriage return, U+000B, U+000C, U+001C-U+001E, U+0085, U+2028, U+2029, and any later
    Python's), never an incomplete copy.
    """
    first = text.splitlines(keepends=True)[:1]
    if not first:
        return None
    end = len(first[0].splitlines()[0])  # the first line without its break
    return first[0][end] if end < len(first[0]) else None


def check_line(value: str, what: str) -> str:
    """Return `value` if it is one printable line; LaunchError naming `what` for any control character, a
    lone surrogate (an undecodable byte) or anything else `line_break` finds (U+2028, U+2029).

    A newline in a value rendered into a job script would end the `#SBATCH` block (sbatch stops at the
    first line that is not a comment), so the options after it would be silently ignored; a break only
    Python splits at (U+2028) would make our own reading of the block (`sbatch_arguments`) differ from
    sbatch's.
    """
    for ch in value:
        if unicodedata.category(ch) == "Cc":
            raise LaunchError(
                f"{what} {value!r} contains the control character U+{ord(ch):04X}; values rendered into a "
                "job script must be one printable line"
            )
        if unicodedata.category(ch) == "Cs":  # how Python passes on an argv byte that is not UTF-8
            raise LaunchError(
                f"{what} {value!r} contains U+{ord(ch):04X}, a byte that is not UTF-8 (job scripts are "
                "UTF-8 text); pass the value in UTF-8"
            )
    ch = line_break(value)
    if ch is not None:
        raise LaunchError(
            f"{what} {value!r} contains the line separator U+{ord(ch):04X}; values rendered into a job "
            "script must be one printable line"
        )
    return value


def sbatch_quote(value: str, what: str) -> str:
    """`value` as one argument of an `#SBATCH` line, checked with `check_line`.

    sbatch, not bash, reads these lines (src/sbatch/opt.c, `_get_argument`): quotes group characters,
    a backslash escapes the next character even inside quotes, and an unquoted `#` starts a comment.
    So a value that is not plain is wrapped in double quotes with `\\` and `"` escaped. Raises
    LaunchError for a control character or a word that splits the script into heterogeneous jobs.
    """
    check_line(value, what)
    if any(word in value.lower() for word in _SBATCH_SPLITTERS):
        raise LaunchError(
            f"{what} {value!r} contains {'/'.join(_SBATCH_SPLITTERS)}, which sbatch reads as a "
            "heterogeneous-job separator; choose another value"
        )
    if _PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def shell_quote(value: str, what: str) -> str:
    """`value` as one bash word (shlex.quote), checked with `check_line`."""
    return shlex.quote(check_line(value, what))


def shell_join(words: list[str], what: str) -> str:
    """Words as one bash command line (shlex.join), each checked with `check_line`."""
    return " ".join(shell_quote(word, what) for word in words)


def sbatch_arguments(script: str) -> list[str]:
    """The arguments sbatch takes from a script's `#SBATCH` lines, parsed the way sbatch parses them.

    sbatch reads `#SBATCH` lines up to the first line that is neither blank nor a comment; in each it
    splits arguments at unquoted whitespace, drops quotes, takes `\\x` as `x` and stops at an unquoted
    `#`. Lines end at a newline, as for sbatch; a line of the block holding anything else `check_line`
    refuses (U+2028, which splitlines would break at) raises LaunchError. Used to find the log directory
    to create, and by the tests to check the block stays whole.
    """
    arguments = []
    for number, line in enumerate(script.split("\n"), 1):
        check_line(line, f"line {number} of the job script")
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.lstrip().startswith("#"):
                break
            continue
        arg, quote, escaped, started = [], None, False, False
        for ch in line[len("#SBATCH") :] + " ":
            if escaped:
                arg.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = started = True
            elif quote is not None:
                if ch == quote:
                    quote = None
                else:
                    arg.append(ch)
            elif ch in "\"'":
                quote, started = ch, True
            elif ch == "#":
                break
            elif ch.isspace():
                if started:
                    arguments.append("".join(arg))
                arg, started = [], False
            else:
                arg.append(ch)
                started = True
        if started and quote is None:
            arguments.append("".join(arg))
    return arguments


def output_pattern(log_dir: Path, name: str) -> str:
    """`--output` value: `log_dir/name` with `%` in the directory doubled (sbatch's pattern escape).

    Raises LaunchError for a backslash, which would make sbatch ignore every pattern (`%j`, `%x`).
    """
    if "\\" in str(log_dir):
        raise LaunchError(f"log directory {log_dir} holds a backslash, which sbatch's --output cannot hold")
    return str(log_dir).replace("%", "%%") + "/" + name


@dataclass(frozen=True)
class SlurmOptions:
    """Scheduler settings shared by training and preprocessing jobs (checked: one printable line each)."""

    partition: str | None = None
    time: str = "01:00:00"
    job_name: str = "mlm-pretrain"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    container_image: str | None = None
    container_mounts: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Raise LaunchError naming the flag whose value holds a control character."""
        for name in (
            "partition",
            "time",
            "job_name",
            "account",
            "qos",
            "constraint",
            "container_image",
            "container_mounts",
        ):
            value = getattr(self, name)
            if value is not None:
                check_line(value, "--" + name.replace("_", "-"))
        for option in self.extra_sbatch:
            check_line(option, "--sbatch-option")

    def sbatch_lines(self) -> list[str]:
        """`#SBATCH` lines for the optional settings, each value quoted for sbatch."""
        pairs = [("partition", self.partition), ("account", self.account), ("qos", self.qos)]
        pairs.append(("constraint", self.constraint))
        lines = [f"#SBATCH --{key}={sbatch_quote(value, '--' + key)}" for key, value in pairs if value]
        return lines + [f"#SBATCH {sbatch_quote(opt, '--sbatch-option')}" for opt in self.extra_sbatch]

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


_PLACEHOLDER = re.compile(r"{{(\w+)}}")


def render(template: str, values: dict[str, str]) -> str:
    """launcher/templates/<template> with each `{{name}}` replaced by `values[name]`, which the caller has
    already quoted for where it lands (`sbatch_quote`, `shell_quote`).

    One pass over the template: a value is inserted as it is and never scanned again, so `{{name}}` inside
    a value stays text (filled in again, it would land inside the value's quotes and toggle them). Raises
    LaunchError when the template has a placeholder without a value or a value has no placeholder.
    """
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    names = set(_PLACEHOLDER.findall(text))
    missing, unused = sorted(names - values.keys()), sorted(values.keys() - names)
    problems = [f"no value for {', '.join(missing)}"] if missing else []
    problems += [f"no placeholder for {', '.join(unused)}"] if unused else []
    if problems:
        raise LaunchError(f"template {template}: {'; '.join(problems)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)  # a function: no `\1` escapes


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
    for arg in train_args:  # before the config reader, whose YAML error would not say why
        check_line(arg, "the trainer argument")
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
    check_line(job.run_dir, f"{job.path}: run_dir")
    log_dir = log_dir_for(job.run_dir, workdir)
    output = output_pattern(log_dir, "%x-%j.out")
    return render(
        "train.sbatch",
        {
            "job_name": sbatch_quote(opts.job_name, "--job-name"),
            "nodes": str(nodes),
            "time": sbatch_quote(opts.time, "--time"),
            "signal_seconds": str(signal_seconds),
            "workdir": sbatch_quote(str(workdir), "the working directory"),
            "output": sbatch_quote(output, "run_dir"),
            "log_dir": shell_quote(str(log_dir), "run_dir"),
            "sbatch_extra": "\n".join(sbatch),
            "srun_extra": shell_join(opts.srun_args(), "--container-image/--container-mounts"),
            "node_command": shell_join(node_cmd, "a trainer argument"),
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
    """Submit a job script with `sbatch --parsable`; return the job id.

    Creates the script's `--output` directory first. LaunchError if it cannot be created or sbatch
    refuses the job.
    """
    sbatch = sbatch_path()
    for argument in sbatch_arguments(script):  # sbatch does not create the log dir: the job would vanish
        if argument.startswith("--output="):
            log_dir = Path(argument.split("=", 1)[1].replace("%%", "%")).parent
            try:
                log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise LaunchError(
                    f"cannot create the job's log directory {log_dir}: {err.strerror}; run_dir (or --out) "
                    "must be on a writable filesystem all nodes share"
                ) from err
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
