"""Job scripts, command lines and hostfiles that the launcher produces."""

import os
import subprocess
import sys

import pytest

from launcher.cli import main
from launcher.hostfile import expand_nodelist, read_hostfile, write_hostfile
from launcher.job_config import LaunchError
from launcher.local import NodeSpec, combine_exit_codes, deepspeed_command, rank_env, torchrun_command
from launcher.slurm import SlurmOptions, parse_time_seconds, render_train_script
from launcher.slurm_data import render_data_scripts


def _bash_syntax_ok(script: str) -> None:
    out = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_dry_run_prints_a_self_requeueing_script(write_config, capsys, tmp_path):
    cfg = write_config()
    argv = ["slurm", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "04:00:00"]
    argv += ["--account", "proj", "--qos", "high", "--constraint", "a100", "--container-image", "reg/img:1"]
    assert main(argv + ["--dry-run", "--", "--config", str(cfg), "optim.lr=1e-4"]) == 0
    script = capsys.readouterr().out
    _bash_syntax_ok(script)
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --time=04:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --gpus-per-node=4",
        f"#SBATCH --output={tmp_path / 'run' / 'slurm'}/%x-%j.out",
        'scontrol requeue "$SLURM_JOB_ID"',
    ]:
        assert line in script
    assert "--container-image=reg/img:1" in script
    assert f"--config {cfg} optim.lr=1e-4 train.resume=auto" in script
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_cpu_job_asks_for_no_gpus_and_warns_within_a_short_limit(write_config):
    script = render_train_script(SlurmOptions(time="5:00"), 2, 1, True, ["--config", str(write_config())])
    assert "--gpus-per-node" not in script.split("srun")[0]
    assert "#SBATCH --signal=B:USR1@30" in script  # a tenth of 5 minutes
    assert " --cpu " in script


def test_time_limits_parse_like_slurm():
    assert parse_time_seconds("30") == 1800
    assert parse_time_seconds("5:30") == 330
    assert parse_time_seconds("04:00:00") == 14400
    assert parse_time_seconds("2-00") == 172800
    assert parse_time_seconds("1-02:03:04") == 93784
    with pytest.raises(LaunchError, match="not a SLURM time limit"):
        parse_time_seconds("four hours")


def test_warning_must_fit_in_the_time_limit(write_config):
    with pytest.raises(LaunchError, match="below the time limit"):
        render_train_script(
            SlurmOptions(time="1"), 1, 1, True, ["--config", str(write_config())], signal_seconds=90
        )


def test_data_scripts_array_and_merge(tmp_path):
    out = tmp_path / "shards"
    build, merge = render_data_scripts(SlurmOptions(partition="cpu"), 3, out, ["--input", "corpus/*.txt"])
    _bash_syntax_ok(build)
    _bash_syntax_ok(merge)
    assert "#SBATCH --array=0-2" in build and "#SBATCH --partition=cpu" in build
    assert '--num-partitions 3 --partition-index "$SLURM_ARRAY_TASK_ID"' in build
    assert "--input 'corpus/*.txt'" in build
    parts = [str(tmp_path / "shards.parts" / f"part-{i:05d}") for i in range(3)]
    assert f"out={out}\n" in merge and f'merge {" ".join(parts)} --out "$out"' in merge
    with pytest.raises(LaunchError, match="--partitions"):
        render_data_scripts(SlurmOptions(), 0, out, [])
    with pytest.raises(LaunchError, match="not after `--`"):
        render_data_scripts(SlurmOptions(), 2, out, ["--out", "x"])


def test_rank_environment_for_node_one_of_two():
    spec = NodeSpec(nproc=2, nnodes=2, node_rank=1, master_addr="node1", master_port=1234, cpu=True)
    env = [rank_env(spec, r) for r in range(2)]
    assert [e["RANK"] for e in env] == ["2", "3"]
    assert {e["WORLD_SIZE"] for e in env} == {"4"} and env[1]["LOCAL_RANK"] == "1"
    assert env[0]["MASTER_ADDR"] == "node1" and env[0]["DS_ACCELERATOR"] == "cpu"


def test_torchrun_and_deepspeed_lines():
    spec = NodeSpec(nproc=8, nnodes=2, node_rank=1, master_addr="n1", master_port=29500, rdzv_timeout_s=60)
    tr = torchrun_command(spec, ["--config", "c.yaml"])
    assert tr[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert (
        "--node-rank=1" in tr
        and "--rdzv-conf=timeout=60" in tr
        and tr[-3:] == ["pretrain", "--config", "c.yaml"]
    )
    ds = deepspeed_command(spec, ["--config", "c.yaml"], hostfile="hf", master_addr="n1")
    assert ds[:3] == ["deepspeed", "--hostfile", "hf"] and "--no_ssh" in ds and "--node_rank=1" in ds
    assert "--master_addr=n1" in ds and ds[-4:] == ["--module", "pretrain", "--config", "c.yaml"]
    with pytest.raises(LaunchError, match="give --master-addr"):  # no ssh: DeepSpeed cannot detect it
        deepspeed_command(spec, ["--config", "c.yaml"], hostfile="hf")


def _run_deepspeed_launch(tmp_path, cfg, *extra: str) -> subprocess.CompletedProcess:
    """Run `mlm-launch local --launcher deepspeed --hostfile HF EXTRA -- --config CFG` as a process, with a
    `deepspeed` on PATH that records the arguments it was exec'd with in TMP_PATH/argv; HF lists 2 hosts."""
    bindir, record = tmp_path / "bin", tmp_path / "argv"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "deepspeed"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {record}\n')
    fake.chmod(0o755)
    (tmp_path / "hf").write_text("# two hosts\nnode-a slots=2\nnode-b slots=2\n")
    argv = [sys.executable, "-m", "launcher", "local", "--launcher", "deepspeed", "--nproc", "2"]
    argv += ["--hostfile", str(tmp_path / "hf"), *extra, "--", "--config", str(cfg)]
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def _launch_deepspeed(tmp_path, cfg, *extra: str) -> list[str]:
    """`_run_deepspeed_launch`, which must succeed; returns the arguments deepspeed was exec'd with."""
    out = _run_deepspeed_launch(tmp_path, cfg, *extra)
    assert out.returncode == 0, out.stderr
    return (tmp_path / "argv").read_text().splitlines()


def test_an_ssh_hostfile_launch_checks_the_global_batch_against_every_host(write_config, tmp_path):
    # micro 4 x accum 2: 2 hosts x --nproc 2 is a world of 4, so 32; 16 would fit --nproc alone
    refused = _run_deepspeed_launch(tmp_path, write_config(global_batch_size=16))
    assert refused.returncode == 1 and not (tmp_path / "argv").exists()
    assert f"2 host(s) in {tmp_path / 'hf'} x --nproc 2" in refused.stderr, refused.stderr
    assert "--num_gpus=2" in _launch_deepspeed(tmp_path, write_config(global_batch_size=32))


def test_a_bad_hostfile_is_one_line_naming_the_file_and_line(write_config, tmp_path, capsys):
    hostfile = tmp_path / "hf"
    hostfile.write_text("a slots=2\nb slots=2\n")
    per_node = ["local", "--launcher", "deepspeed", "--nnodes", "3", "--node-rank", "1", "--master-addr", "a"]
    assert main([*per_node, "--hostfile", str(hostfile), "--", "--config", str(write_config())]) == 1
    assert f"{hostfile} lists 2 host(s), fewer than --nnodes 3" in capsys.readouterr().err
    for text, expected in [
        ("a slots=2\nb slots 2\n", f"{hostfile}:2: 'b slots 2' is not `host slots=N`"),
        ("a slots=2\n\na slots=4\n", f"{hostfile}:3: host 'a' is listed twice"),
        ("# nothing\n\n", f"hostfile {hostfile} lists no host"),
    ]:
        hostfile.write_text(text)
        with pytest.raises(LaunchError) as err:
            read_hostfile(hostfile)
        assert str(err.value).startswith(expected), err.value
    with pytest.raises(LaunchError, match=f"hostfile {tmp_path / 'nope'}: No such file or directory"):
        read_hostfile(tmp_path / "nope")  # DeepSpeed would go on with this machine's GPUs alone
    hostfile.write_text("a slots=2 # spare\nb slots=8\n")
    assert read_hostfile(hostfile) == ["a", "b"]


def test_deepspeed_hostfile_launch_leaves_master_detection_to_deepspeed(write_config, tmp_path):
    cfg = write_config()
    args = _launch_deepspeed(tmp_path, cfg)
    assert args[:2] == ["--hostfile", str(tmp_path / "hf")] and "--num_gpus=2" in args
    assert not [a for a in args if a.startswith("--master_addr")]  # DeepSpeed asks the first host
    assert args[-3:] == ["pretrain", "--config", str(cfg)]


def test_deepspeed_hostfile_launch_passes_a_given_master_addr(write_config, tmp_path):
    args = _launch_deepspeed(tmp_path, write_config(), "--master-addr", "10.0.0.1")
    assert "--master_addr=10.0.0.1" in args and "--master_port=29500" in args


def test_exit_codes_combine_failure_over_preemption_over_success():
    assert combine_exit_codes([0, 0]) == 0
    assert combine_exit_codes([75, 0]) == 75
    assert combine_exit_codes([75, 1]) == 1
    assert combine_exit_codes([-10, 0]) == 138  # killed by SIGUSR1, reported as a shell would


def test_hostfile_from_a_list_and_outside_an_allocation(tmp_path, monkeypatch, capsys):
    path = write_hostfile(expand_nodelist("a,b"), 4, tmp_path / "hf")
    assert path.read_text() == "a slots=4\nb slots=4\n"
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    assert main(["hostfile", "--out", str(tmp_path / "x")]) == 1
    assert "not inside a SLURM allocation" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
