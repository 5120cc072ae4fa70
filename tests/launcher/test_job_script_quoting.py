"""Hostile values in SLURM job scripts: nothing they hold runs, every value arrives whole, and the #SBATCH
block is never cut short. The rendered scripts are parsed by bash and run with srun, scontrol, sbatch and
mlm-data shadowed on PATH by recording stubs; #SBATCH lines are read the way sbatch reads them."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher import slurm, slurm_data
from launcher.cli import main
from launcher.job_config import LaunchError
from launcher.slurm import SlurmOptions, check_line, render_train_script, sbatch_arguments
from launcher.slurm_data import render_data_scripts

RECORD = f"""#!/bin/bash
{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$STUB_LOG.$(basename "$0")"
"""
STUBS = {
    "srun": RECORD,
    "mlm-data": RECORD,
    "scancel": RECORD,
    "scontrol": RECORD + '[ "$1" = show ] && echo node1\nexit 0\n',
    "sbatch": RECORD + "cat > \"$STUB_LOG.script\"\necho '4242;cluster'\n",
}


MARKER = "pwned"
# Every kind of shell and sbatch metacharacter; each would create a file named MARKER if it ran.
EVIL = f"a b $(touch {MARKER}) `touch {MARKER}` ;touch {MARKER}; 'q' \"d\" #c \\ %j end"


def placeholders(*templates: str) -> str:
    """Every `{{name}}` of the given job-script templates (all of them when none is given), as one string."""
    paths = [slurm.TEMPLATES / t for t in templates] or sorted(slurm.TEMPLATES.glob("*.sbatch"))
    names = {name for path in paths for name in re.findall(r"{{(\w+)}}", path.read_text())}
    return "".join("{{" + name + "}}" for name in sorted(names))


def nothing_ran(*dirs: Path) -> bool:
    return not any(list(d.rglob(MARKER + "*")) for d in dirs)


@pytest.fixture
def stubs(tmp_path, monkeypatch) -> Path:
    """A bin dir of recording stubs first on PATH; returns the log prefix (one file per stub)."""
    bin_dir = tmp_path / "stub bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "log"))
    return tmp_path / "log"


def calls(log: Path, stub: str) -> list[list[str]]:
    path = Path(f"{log}.{stub}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_script(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    assert subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True).returncode == 0
    path = tmp_path / "job.sh"
    path.write_text(script)
    slurm_env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1", "SLURM_ARRAY_TASK_ID": "1", **env}
    return subprocess.run(
        ["bash", str(path)], cwd=tmp_path, env={**os.environ, **slurm_env}, capture_output=True, text=True
    )


def test_train_script_keeps_hostile_values_whole_and_runs_none(tmp_path, stubs, monkeypatch):
    evil = EVIL
    workdir = tmp_path / f"work {evil}"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"train": {"micro_batch_size": 4}}))
    run_dir = str(tmp_path / f"run %x dir 'quoted' $(touch {MARKER})")
    opts = SlurmOptions(
        job_name=evil,
        partition=evil,
        account=evil,
        qos=evil,
        constraint=evil,
        extra_sbatch=[f"--comment={evil}"],
        time="10:00",
    )
    # data.path: a string key the trainer's config loader (which the launcher runs) accepts as is
    train_args = ["--config", str(config), f"run_dir={run_dir}", f"data.path={evil}"]
    script = render_train_script(opts, 2, 1, True, train_args)

    assert sbatch_arguments(script) == [
        f"--job-name={evil}",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--time=10:00",
        "--requeue",
        "--open-mode=append",
        "--signal=B:USR1@60",
        f"--chdir={workdir}",
        f"--output={run_dir.replace('%', '%%')}/slurm/%x-%j.out",
        f"--partition={evil}",
        f"--account={evil}",
        f"--qos={evil}",
        f"--constraint={evil}",
        f"--comment={evil}",
    ]
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert nothing_ran(tmp_path)
    (srun,) = calls(stubs, "srun")
    assert srun[-6:] == ["--", *train_args, "train.resume=auto"]


def test_data_scripts_keep_hostile_paths_whole_and_run_none(tmp_path, stubs, monkeypatch):
    evil = EVIL
    out = tmp_path / f"out {evil}".replace("\\", "")  # --output cannot hold a backslash (tested below)
    tool = tmp_path / f"tools {evil}" / "mlm-data"
    tool.parent.mkdir()
    tool.write_text(STUBS["mlm-data"])
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(slurm_data, "mlm_data_command", lambda opts: str(tool))
    build_args = ["--input", f"corpus {evil}/*.txt", "--tokenizer", evil]
    build, merge = render_data_scripts(SlurmOptions(job_name=evil, partition=evil), 3, out, build_args)

    parts = [f"{out}.parts/part-{i:05d}" for i in range(3)]
    logs = f"{out}.parts/logs".replace("%", "%%")
    assert sbatch_arguments(build) == [
        f"--job-name={evil}-build",
        "--array=0-2",
        "--ntasks=1",
        "--time=01:00:00",
        f"--chdir={Path.cwd()}",
        f"--output={logs}/%x-%A_%a.out",
        f"--partition={evil}",
    ]
    assert sbatch_arguments(merge)[0] == f"--job-name={evil}-merge"
    assert sbatch_arguments(merge)[-2:] == [f"--output={logs}/%x-%j.out", f"--partition={evil}"]
    for script in (build, merge):
        result = run_script(script, tmp_path)
        assert result.returncode == 0, result.stderr
    assert nothing_ran(tmp_path, Path.cwd())
    assert calls(stubs, "mlm-data") == [
        ["build", *build_args, "--num-partitions", "3", "--partition-index", "1", "--out", parts[1]],
        ["merge", *parts, "--out", str(out)],
    ]


def test_submit_creates_the_log_dir_sbatch_reads_from_the_quoted_output_line(write_config, tmp_path, stubs):
    run_dir = tmp_path / "runs 100% 'mine'"
    cfg = write_config()
    argv = ["slurm", "--nodes", "1", "--cpu", "--job-name", "my job", "--", "--config", str(cfg)]
    assert main([*argv, f"run_dir={run_dir}"]) == 0
    assert (run_dir / "slurm").is_dir()  # % unescaped, quotes gone: the directory sbatch will write to
    assert calls(stubs, "sbatch") == [["--parsable"]]
    assert "--job-name=my job" in sbatch_arguments(Path(f"{stubs}.script").read_text())


FLAGS = ["--job-name", "--partition", "--account", "--qos", "--constraint", "--sbatch-option", "--time"]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "gpu\x1b[0m", "a\tb"])
@pytest.mark.parametrize("flag", [*FLAGS, "run_dir"])
def test_control_characters_are_refused_with_one_line(write_config, tmp_path, capsys, flag, bad):
    value = bad if flag != "--time" else "10:00" + bad
    ours = [flag, value] if flag != "run_dir" else []
    theirs = [f"run_dir={tmp_path / value}"] if flag == "run_dir" else []
    argv = ["slurm", "--nodes", "1", "--cpu", *ours, "--dry-run", "--", "--config", str(write_config())]
    assert main([*argv, *theirs]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no script printed
    assert captured.err.count("\n") == 1 and "control character" in captured.err
    assert flag in captured.err


@pytest.mark.parametrize("flag", ["--job-name", "--out", "--partition"])
def test_slurm_data_refuses_a_newline(tmp_path, capsys, flag):
    value = str(tmp_path / "x\ny") if flag == "--out" else "x\ny"
    extra = [] if flag == "--out" else ["--out", str(tmp_path / "out")]
    argv = ["slurm-data", "--partitions", "2", flag, value, *extra, "--dry-run", "--", "--input", "c"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "U+000A" in err


def test_a_backslash_in_the_log_dir_is_refused(tmp_path):
    with pytest.raises(LaunchError, match="holds a backslash"):
        render_data_scripts(SlurmOptions(), 2, tmp_path / "a\\b", ["--input", "c"])


def test_a_heterogeneous_job_separator_is_refused(write_config, capsys):
    assert (
        main(
            [
                "slurm",
                "--nodes",
                "1",
                "--cpu",
                "--job-name",
                "my-hetjob",
                "--dry-run",
                "--",
                "--config",
                str(write_config()),
            ]
        )
        == 1
    )
    assert "heterogeneous-job separator" in capsys.readouterr().err


def test_plain_values_stay_unquoted(write_config):
    script = render_train_script(
        SlurmOptions(partition="gpu", time="5:00"), 1, 1, True, ["--config", str(write_config())]
    )
    assert "#SBATCH --partition=gpu\n" in script and f"{sys.executable} -m launcher" in script


def test_a_log_dir_that_cannot_be_created_is_one_line(write_config, tmp_path, stubs, capsys):
    (tmp_path / "file").write_text("not a directory")
    cfg = write_config()
    run_dir = tmp_path / "file" / "run"  # under a regular file: mkdir fails even for root
    assert main(["slurm", "--nodes", "1", "--cpu", "--", "--config", str(cfg), f"run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the job's log directory" in err
    assert calls(stubs, "sbatch") == []  # nothing submitted


def test_a_placeholder_in_the_container_image_runs_nothing(write_config, tmp_path, stubs, capsys):
    # The old render filled `{{node_command}}` in again inside the quoted --container-image: the quotes
    # toggled and the trainer argument's `$(touch pwned)` ran when the job started.
    argv = ["slurm", "--nodes", "1", "--cpu", "--container-image", "{{node_command}}", "--dry-run", "--"]
    train_args = ["--config", str(write_config()), f"data.path=$(touch {MARKER})"]
    assert main([*argv, *train_args]) == 0
    result = run_script(capsys.readouterr().out, tmp_path)
    assert result.returncode == 0, result.stderr
    assert nothing_ran(tmp_path, Path.cwd())
    (srun,) = calls(stubs, "srun")
    assert srun[1] == "--container-image={{node_command}}"
    assert srun[-4:] == [*train_args, "train.resume=auto"]


def test_placeholders_inside_values_stay_text_in_the_train_script(tmp_path, stubs, monkeypatch):
    # Every name of the template in every value (the old render refused most of these, taking a name left
    # in a value for a placeholder without a value, and ran the ones filled in after their value).
    evil = EVIL + placeholders("train.sbatch")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"train": {"micro_batch_size": 4}}))
    opts = SlurmOptions(
        job_name=evil,
        partition=evil,
        container_image="img" + evil,
        container_mounts=evil,
        extra_sbatch=[f"--comment={evil}"],
        time="10:00",
    )
    run_dir = str(tmp_path / f"run {placeholders('train.sbatch')}")
    train_args = ["--config", str(config), f"run_dir={run_dir}", f"data.path={evil}"]
    script = render_train_script(opts, 2, 1, True, train_args)

    assert sbatch_arguments(script) == [
        f"--job-name={evil}",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--time=10:00",
        "--requeue",
        "--open-mode=append",
        "--signal=B:USR1@60",
        f"--chdir={workdir}",
        f"--output={run_dir}/slurm/%x-%j.out",
        f"--partition={evil}",
        f"--comment={evil}",
    ]
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert nothing_ran(tmp_path)
    (srun,) = calls(stubs, "srun")
    assert srun[:4] == [
        "--kill-on-bad-exit=1",
        f"--container-image=img{evil}",
        f"--container-mounts={evil}",
        f"--container-workdir={workdir}",
    ]
    assert srun[-6:] == ["--", *train_args, "train.resume=auto"]


def test_placeholders_inside_values_stay_text_in_the_data_scripts(tmp_path, stubs, monkeypatch):
    # `--out DIR{{build_args}}`: the parts directory was filled in before the build arguments (and the merge
    # job's part paths before `out`), so the later value landed inside the earlier one's quotes.
    evil = EVIL.replace("\\", "") + placeholders()  # --output cannot hold a backslash (tested above)
    out = tmp_path / f"out {evil}"
    tool = tmp_path / f"tools {EVIL}" / "mlm-data"
    tool.parent.mkdir()
    tool.write_text(STUBS["mlm-data"])
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(slurm_data, "mlm_data_command", lambda opts: str(tool))
    build_args = ["--input", f"corpus {evil}/*.txt", "--tokenizer", evil]
    build, merge = render_data_scripts(SlurmOptions(job_name=evil, partition=evil), 3, out, build_args)

    parts = [f"{out}.parts/part-{i:05d}" for i in range(3)]
    logs = f"{out}.parts/logs".replace("%", "%%")
    assert sbatch_arguments(build) == [
        f"--job-name={evil}-build",
        "--array=0-2",
        "--ntasks=1",
        "--time=01:00:00",
        f"--chdir={Path.cwd()}",
        f"--output={logs}/%x-%A_%a.out",
        f"--partition={evil}",
    ]
    assert sbatch_arguments(merge)[0] == f"--job-name={evil}-merge"
    assert sbatch_arguments(merge)[-2:] == [f"--output={logs}/%x-%j.out", f"--partition={evil}"]
    for script in (build, merge):
        result = run_script(script, tmp_path)
        assert result.returncode == 0, result.stderr
    assert nothing_ran(tmp_path, Path.cwd())
    assert calls(stubs, "mlm-data") == [
        ["build", *build_args, "--num-partitions", "3", "--partition-index", "1", "--out", parts[1]],
        ["merge", *parts, "--out", str(out)],
    ]


def test_render_fills_each_placeholder_once_and_refuses_a_template_its_values_do_not_fit(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(slurm, "TEMPLATES", tmp_path)
    (tmp_path / "t.sbatch").write_text("a={{a}} b={{b}} a={{a}}\n")
    values = {"a": "{{b}} \\1 \\g<0>", "b": "{{a}} {{c}}"}  # re.sub would read the backslashes as groups
    assert slurm.render("t.sbatch", values) == "a={{b}} \\1 \\g<0> b={{a}} {{c}} a={{b}} \\1 \\g<0>\n"
    with pytest.raises(LaunchError, match=r"^template t.sbatch: no value for b$"):
        slurm.render("t.sbatch", {"a": "x"})
    with pytest.raises(LaunchError, match=r"^template t.sbatch: no placeholder for c$"):
        slurm.render("t.sbatch", {"a": "x", "b": "y", "c": "z"})


# Every code point str.splitlines() ends a line at, found by trying each one (the launcher's own parser and
# every Python reader of a job script split there; sbatch and bash split at the newline alone).
LINE_BREAKS = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1]


def test_every_character_splitlines_breaks_at_is_refused():
    assert {"\n", "\r", "\u2028", "\u2029", "\x85"} <= set(LINE_BREAKS)
    for ch in LINE_BREAKS:
        with pytest.raises(LaunchError, match=rf"^--job-name 'a.*b' contains .* U\+{ord(ch):04X}; "):
            check_line(f"a{ch}b", "--job-name")
    assert check_line("gpu é 中 \u00a0 \u200b x", "--job-name")  # other characters are the user's business


@pytest.mark.parametrize("ch", LINE_BREAKS, ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_a_line_break_hidden_in_the_job_name_adds_no_sbatch_line(write_config, tmp_path, stubs, capsys, ch):
    # U+2028 passed check_line (it is no control character), sbatch reads the line whole, but our parser
    # split it and took `#SBATCH --output=...` for an option: submit() created that directory.
    evil_dir = tmp_path / "evil"
    job_name = f"x{ch}#SBATCH --output={evil_dir}/%j #"
    argv = ["slurm", "--nodes", "1", "--cpu", "--job-name", job_name, "--", "--config", str(write_config())]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("mlm-launch: error: --job-name ") and f"U+{ord(ch):04X}" in captured.err
    assert not evil_dir.exists() and calls(stubs, "sbatch") == []


@pytest.mark.parametrize("ch", ["\u2028", "\u2029"])
@pytest.mark.parametrize("flag", [*FLAGS, "--container-image", "--container-mounts", "run_dir", "data.path"])
def test_line_separators_are_refused_in_every_value(write_config, tmp_path, capsys, flag, ch):
    value = f"a{ch}b" if flag != "--time" else f"10:00{ch}"
    ours = [flag, value] if flag.startswith("--") else []
    theirs = {"run_dir": [f"run_dir={tmp_path / value}"], "data.path": [f"data.path={value}"]}.get(flag, [])
    argv = ["slurm", "--nodes", "1", "--cpu", *ours, "--dry-run", "--", "--config", str(write_config())]
    assert main([*argv, *theirs]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and f"U+{ord(ch):04X}" in captured.err
    assert {"data.path": "the trainer argument"}.get(flag, flag) in captured.err


@pytest.mark.parametrize("flag", ["--job-name", "--out", "--partition"])
def test_slurm_data_refuses_a_line_separator(tmp_path, capsys, flag):
    value = str(tmp_path / "x\u2028y") if flag == "--out" else "x\u2028y"
    extra = [] if flag == "--out" else ["--out", str(tmp_path / "out")]
    argv = ["slurm-data", "--partitions", "2", flag, value, *extra, "--dry-run", "--", "--input", "c\u2029"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "U+2028" in err


def test_the_sbatch_parser_splits_where_sbatch_does_and_refuses_other_breaks():
    # sbatch reads lines up to a newline; a hidden break inside one is refused, not split or skipped.
    assert sbatch_arguments('#SBATCH --job-name="a b"\n#SBATCH --nodes=2\necho\n#SBATCH --qos=x\n') == [
        "--job-name=a b",
        "--nodes=2",
    ]
    with pytest.raises(LaunchError, match=r"line 2 of the job script .* U\+2028"):
        sbatch_arguments('#!/bin/bash\n#SBATCH --job-name="x\u2028#SBATCH --output=/tmp/x/%j #"\n')


@pytest.mark.parametrize("flag", ["--job-name", "--partition", "data.path"])
def test_an_undecodable_byte_is_one_line_not_a_traceback(write_config, stubs, capsys, flag):
    # Python hands an argv byte that is not UTF-8 (`$'\xff'`) over as a lone surrogate, which sbatch's
    # UTF-8 stdin cannot take: it used to end in UnicodeEncodeError after the checks.
    value = "a\udcffb"
    ours, theirs = ([flag, value], []) if flag.startswith("--") else ([], [f"{flag}={value}"])
    argv = ["slurm", "--nodes", "1", "--cpu", *ours, "--", "--config", str(write_config()), *theirs]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "U+DCFF" in err and "not UTF-8" in err
    assert calls(stubs, "sbatch") == []


@pytest.mark.parametrize(
    "record, code",
    [(f"3 rank 1 (local rank 0 on node2) exited with 3 $(touch {MARKER}) `touch {MARKER}`", 3), ("x y", 137)],
)
def test_a_rank_failure_record_sets_the_exit_code_and_runs_nothing(
    write_config, tmp_path, stubs, record, code
):
    # srun stands in for a job whose rank on node2 exited 3: that node's launcher wrote the record, and the
    # other node's task, SIGKILLed after KillWait, made srun's own exit code 137. A record that is not
    # `CODE WHAT` (the file is in the run dir: anyone may write it) leaves srun's code.
    (tmp_path / "stub bin" / "srun").write_text(
        f"#!/bin/bash\necho '{record}' >\"$MLM_FAILURE_FILE\"\nexit 137\n"
    )
    (tmp_path / "run" / "slurm").mkdir(parents=True)
    script = render_train_script(SlurmOptions(time="10:00"), 2, 1, True, ["--config", str(write_config())])
    result = run_script(script, tmp_path)
    assert result.returncode == code, result.stdout + result.stderr
    named = f"] rank 1 (local rank 0 on node2) exited with 3 $(touch {MARKER}) `touch {MARKER}`; srun stopped"
    assert (named in result.stdout) == (code == 3), result.stdout
    assert "requeue" not in calls(stubs, "scontrol")[-1]
    assert nothing_ran(tmp_path, Path.cwd())
    assert not list((tmp_path / "run" / "slurm").iterdir())  # the record was read and removed
