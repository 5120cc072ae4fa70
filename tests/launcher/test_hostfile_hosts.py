"""Hosts that reach ssh or pdsh: every hostfile the launcher reads or writes, every node list it expands and
`--master-addr` hold host names (DNS names, IPv4 or IPv6 addresses) and nothing ssh could take for an
option or a shell could run. Launches run as processes with `deepspeed`, `ssh`, `pdsh` and `scontrol`
shadowed on PATH by stubs that record their arguments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import hostfile as hostfiles
from launcher.cli import main
from launcher.hostfile import read_hostfile, write_hostfile
from launcher.job_config import LaunchError

MARKER = "pwned"
# Each is something ssh, pdsh or a shell reads as more than a host; none contains whitespace, so each is
# one `\S+` host for DeepSpeed's hostfile pattern.
HOSTILE = [
    f"-oProxyCommand=touch${{IFS}}{MARKER}",  # ssh runs a ProxyCommand locally, before any network
    "-p2222",
    "-",
    f"a;touch${{IFS}}{MARKER}",
    f"$(touch${{IFS}}{MARKER})",
    f"`touch${{IFS}}{MARKER}`",
    "user@node1",  # pdsh and ssh: another user
    "node1,node2",  # pdsh -w: two hosts
    "node[1-2]",  # pdsh -w: a range
    "^hosts",  # pdsh -w: read hosts from a file
    "node1:2",
    "node_1",
    "nöde1",  # not ASCII
    "node\uff11",  # a fullwidth digit
    "node1.",
    ".node1",
    "a..b",
    "-node1",
    "node1-",
    "a" * 64,  # a label over 63 characters
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]),  # 254 characters
    "123",  # digits and dots only: an address (inet_aton reads "123" as 0.0.0.123), and not one of ours
    "1.2.3",
    "256.1.1.1",
    "010.0.0.1",  # inet_aton reads a leading 0 as octal
    "fe80::1%eth0",  # a scope is free text to Python's ipaddress
    f"fe80::1%$(touch${{IFS}}{MARKER})",
    ":::",
    "",
]
GOOD = [
    "node1",
    "gpu-01.cluster.example",
    "NODE7",
    "1node",
    "a" * 63,
    ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]),  # 253 characters
    "10.0.0.1",
    "255.255.255.255",
    "::1",
    "fd00::1:2",
    "::ffff:10.0.0.1",
]


def stub_path(tmp_path: Path, *names: str) -> dict[str, str]:
    """A bin dir of stubs that record their argv to TMP_PATH/NAME.argv, first on PATH; returns the env."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name in names:
        stub = bindir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {tmp_path / name}.argv\n')
        stub.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def nothing_ran(tmp_path: Path, *names: str) -> bool:
    """No stub was called and no file named MARKER appeared under tmp_path or the working directory."""
    stubs_ran = [name for name in names if (tmp_path / f"{name}.argv").exists()]
    markers = list(tmp_path.rglob(MARKER + "*")) + list(Path.cwd().glob(MARKER + "*"))
    return not stubs_ran and not markers


@pytest.mark.parametrize("host", GOOD)
def test_host_names_and_addresses_are_accepted(tmp_path, host):
    hostfile = tmp_path / "hf"
    hostfile.write_text(f"{host} slots=2\nnode0 slots=2\n")
    assert read_hostfile(hostfile) == [host, "node0"]
    assert hostfiles.check_host(host, "--master-addr") == host


@pytest.mark.parametrize("host", [h for h in HOSTILE if h])
def test_a_hostfile_host_that_is_no_host_name_is_refused_naming_file_and_line(tmp_path, host):
    hostfile = tmp_path / "hf"
    hostfile.write_text(f"# ours\nnode1 slots=2\n{host} slots=2\n")
    with pytest.raises(LaunchError) as err:
        read_hostfile(hostfile)
    assert str(err.value).startswith(f"{hostfile}:3: host {host[:80]!r} is not a host name"), err.value
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("host", HOSTILE)
def test_check_host_refuses_every_hostile_shape(host):
    with pytest.raises(LaunchError, match="^--master-addr: host .* is not a host name"):
        hostfiles.check_host(host, "--master-addr")


def _launch(tmp_path: Path, write_config, *argv: str) -> subprocess.CompletedProcess:
    """`mlm-launch local --cpu ARGV -- --config CFG` as a process, deepspeed/ssh/pdsh stubbed on PATH."""
    env = stub_path(tmp_path, "deepspeed", "ssh", "pdsh")
    command = [sys.executable, "-m", "launcher", "local", "--cpu", *argv]
    command += ["--", "--config", str(write_config())]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_an_ssh_option_in_a_hostfile_runs_nothing(tmp_path, write_config):
    # DeepSpeed's reachability check would run `ssh -o PasswordAuthentication=no HOST hostname`: ssh
    # takes this host for -oProxyCommand and runs `touch pwned` here (checked with the real ssh).
    hostfile = tmp_path / "hf"
    hostfile.write_text(f"-oProxyCommand=touch${{IFS}}{MARKER} slots=1\nnode2 slots=1\n")
    out = _launch(tmp_path, write_config, "--launcher", "deepspeed", "--hostfile", str(hostfile))
    assert out.returncode == 1
    assert out.stderr.startswith(f"mlm-launch: error: {hostfile}:1: host '-oProxyCommand"), out.stderr
    assert out.stderr.count("\n") == 1
    assert nothing_ran(tmp_path, "deepspeed", "ssh", "pdsh")


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun", "spawn"])
def test_a_master_addr_that_is_no_host_is_refused_before_anything_starts(tmp_path, write_config, launcher):
    # With ssh, DeepSpeed writes --master_addr into the command line pdsh runs in a shell on every host.
    (tmp_path / "hf").write_text("node1 slots=1\nnode2 slots=1\n")
    bad = f"node1;touch${{IFS}}{MARKER}"
    hostfile = ["--hostfile", str(tmp_path / "hf")] if launcher == "deepspeed" else []
    out = _launch(tmp_path, write_config, "--launcher", launcher, *hostfile, "--master-addr", bad)
    assert out.returncode == 1
    assert out.stderr.startswith(f"mlm-launch: error: --master-addr: host {bad!r} is not a host name")
    assert out.stderr.count("\n") == 1
    assert nothing_ran(tmp_path, "deepspeed", "ssh", "pdsh")


def test_mlm_launch_hostfile_refuses_a_node_list_host_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["hostfile", f"--nodes=node1,-oProxyCommand=touch${{IFS}}{MARKER}", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlm-launch: error: --nodes: host '-oProxyCommand=") and err.count("\n") == 1
    assert not out.exists()


def test_a_hostile_slurm_node_list_is_refused_and_writes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "hf"
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", f"node1,$(touch {MARKER})")
    assert main(["hostfile", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlm-launch: error: $SLURM_JOB_NODELIST: host '$(touch") and err.count("\n") == 1
    assert not out.exists()


def test_hosts_from_scontrol_are_checked_too(tmp_path, capsys, monkeypatch):
    # `node[1-2]` goes through `scontrol show hostnames`; whatever it prints is checked like any host.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text("#!/bin/sh\necho node1\necho '-oProxyCommand=touch${IFS}pwned'\n")
    (bindir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    assert main(["hostfile", "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlm-launch: error: $SLURM_JOB_NODELIST: host '-oProxyCommand"), err
    assert not (tmp_path / "hf").exists()


def test_a_node_list_scontrol_would_take_for_an_option_is_refused_before_it_runs(tmp_path, capsys):
    env = stub_path(tmp_path, "scontrol")
    out = subprocess.run(
        [sys.executable, "-m", "launcher", "hostfile", "--nodes=-M[1-2]", "--out", str(tmp_path / "hf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "--nodes: '-M[1-2]' is not a SLURM node list" in out.stderr, out.stderr
    assert nothing_ran(tmp_path, "scontrol") and not (tmp_path / "hf").exists()


def test_write_hostfile_writes_only_host_names(tmp_path):
    path = tmp_path / "hf"
    with pytest.raises(LaunchError, match=rf"^{path}:2: host 'a;b' is not a host name"):
        write_hostfile(["node1", "a;b"], 2, path)
    assert not path.exists()


@pytest.mark.parametrize("ch", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_a_line_break_deepspeed_does_not_split_at_is_refused(tmp_path, ch):
    # DeepSpeed reads the file with readlines() (newlines only) and would see one host, node1, where
    # str.splitlines() saw two: a world size other than the one checked against the config.
    hostfile = tmp_path / "hf"
    hostfile.write_text(f"node0 slots=1\nnode1 slots=1{ch}node2 slots=1\n", encoding="utf-8")
    with pytest.raises(LaunchError, match=rf"^{hostfile}:2: .*U\+{ord(ch):04X}"):
        read_hostfile(hostfile)
    hostfile.write_text("node0 slots=1\r\nnode1\tslots=1\rnode2 slots=1\n")  # what DeepSpeed splits at
    assert read_hostfile(hostfile) == ["node0", "node1", "node2"]


@pytest.mark.parametrize(
    "override",
    [
        f"data.path=x;touch${{IFS}}{MARKER}",
        f"run_dir=$(touch {MARKER})",
        f"run_dir='`touch${{IFS}}{MARKER}`'",
        f"run_dir='a b&&touch {MARKER}'",
        "data.path='a!b'",
    ],
)
def test_a_trainer_argument_a_remote_shell_would_run_is_refused_in_ssh_mode(tmp_path, write_config, override):
    # DeepSpeed's pdsh runner joins the trainer's arguments unquoted into the command line a shell runs on
    # every host (an argument with a space only gets double quotes, where $(...) still runs).
    (tmp_path / "hf").write_text("node1 slots=1\nnode2 slots=1\n")
    env = stub_path(tmp_path, "deepspeed", "ssh", "pdsh")
    command = [sys.executable, "-m", "launcher", "local", "--cpu", "--launcher", "deepspeed"]
    command += ["--hostfile", str(tmp_path / "hf"), "--", "--config", str(write_config()), override]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"mlm-launch: error: --launcher deepspeed --hostfile {tmp_path / 'hf'}: ")
    assert f"trainer argument {override!r}" in out.stderr and out.stderr.count("\n") == 1
    assert nothing_ran(tmp_path, "deepspeed", "ssh", "pdsh")


def test_plain_overrides_still_reach_deepspeed_in_ssh_mode(tmp_path, write_config):
    (tmp_path / "hf").write_text("node1 slots=1\nnode2 slots=1\n")
    env = stub_path(tmp_path, "deepspeed")
    command = [sys.executable, "-m", "launcher", "local", "--cpu", "--launcher", "deepspeed"]
    command += ["--hostfile", str(tmp_path / "hf"), "--", "--config", str(write_config())]
    command += ["train.resume_allow_changed=[data]", "optim.lr=1e-3"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = (tmp_path / "deepspeed.argv").read_text().splitlines()
    assert argv[-2:] == ["train.resume_allow_changed=[data]", "optim.lr=1e-3"]


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MASTER_ADDR", f"node1;touch {MARKER}", "$MASTER_ADDR: host 'node1;touch"),
        ("MASTER_ADDR", "-oProxyCommand=x", "$MASTER_ADDR: host '-oProxyCommand=x'"),
        ("SLURM_NNODES", "2x", "$SLURM_NNODES='2x' is not a non-negative integer"),
        ("MASTER_PORT", "-1", "$MASTER_PORT='-1' is not a non-negative integer"),
    ],
)
def test_slurm_node_refuses_what_the_job_environment_holds_that_is_no_host_or_number(
    write_config, capsys, monkeypatch, name, value, message
):
    monkeypatch.setenv(name, value)
    assert main(["slurm-node", "--cpu", "--", "--config", str(write_config())]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mlm-launch: error: {message}"), err
    assert err.count("\n") == 1
