"""Bad launch requests fail before anything starts or is submitted, with a message naming the problem."""

import os
import subprocess
import sys
import time

import pytest

from launcher.cli import main
from launcher.job_config import read_job_config
from tests.helpers import free_port

LAUNCH = [sys.executable, "-m", "launcher"]


def test_missing_config_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["local", "--cpu", "--", "--config", str(missing)]) == 1
    assert f"config file not found: {missing}" in capsys.readouterr().err


def test_global_batch_inconsistent_with_slurm_nodes_is_refused(write_config, capsys, monkeypatch, tmp_path):
    # 4 x 2 x (2 nodes x 2 GPUs) = 32, not 16: refused before sbatch is even looked for.
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = write_config(global_batch_size=16)
    code = main(["slurm", "--nodes", "2", "--gpus-per-node", "2", "--", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "train.global_batch_size=16" in err and "--nodes 2 x --gpus-per-node 2" in err and "= 32" in err


def test_override_on_the_command_line_is_what_gets_checked(write_config, capsys):
    cfg = write_config(global_batch_size=16)
    # micro 4 x accum 2 x 2 ranks = 16 fits; the override accum=4 makes it 32.
    assert read_job_config(["--config", str(cfg)]).global_batch_size == 16
    code = main(["local", "--cpu", "--nproc", "2", "--", "--config", str(cfg), "train.grad_accum_steps=4"])
    assert code == 1
    assert "train.grad_accum_steps (4)" in capsys.readouterr().err


def test_base_file_keys_are_followed(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "run_dir: runs/a\ndata: {path: shards}\ntrain: {micro_batch_size: 8, global_batch_size: 64}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {grad_accum_steps: 4}\n")
    job = read_job_config(["--config", str(tmp_path / "child.yaml")])
    train = job.config.train
    assert (job.run_dir, train.micro_batch_size, train.grad_accum_steps, job.global_batch_size) == (
        "runs/a",
        8,
        4,
        64,
    )


def test_the_launcher_refuses_what_the_trainer_refuses(tmp_path, capsys):
    # A list of `base:` files (the trainer takes one), an unknown key: refused before any rank starts
    # or any job is submitted, with the trainer's own message.
    from pretrain.config import ConfigError, load_config

    (tmp_path / "a.yaml").write_text("run_dir: runs/a\ndata: {path: shards}\n")
    (tmp_path / "b.yaml").write_text("model: {preset: tiny}\n")
    (tmp_path / "list.yaml").write_text("base: [a.yaml, b.yaml]\n")
    (tmp_path / "typo.yaml").write_text("base: a.yaml\ntrain: {micro_bach_size: 4}\n")
    for name, message in (("list.yaml", "`base` must be a file path"), ("typo.yaml", "did you mean")):
        cfg = str(tmp_path / name)
        with pytest.raises(ConfigError, match=message):
            load_config(cfg)
        for command in (["local", "--cpu"], ["slurm", "--nodes", "1", "--cpu", "--dry-run"]):
            assert main([*command, "--", "--config", cfg]) == 1
            captured = capsys.readouterr()
            assert captured.err.count("\n") == 1 and message in captured.err, captured.err
            assert captured.out == ""


def test_importing_the_shared_config_module_stays_light():
    # The launcher imports pretrain.config; it must not pull in torch or numpy (slow, and absent on a
    # login node that only submits jobs).
    code = "import sys, launcher.cli, pretrain.config; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_sbatch_on_path_is_a_clear_error(write_config, tmp_path):
    cfg = write_config()
    env = {**os.environ, "PATH": str(tmp_path)}
    out = subprocess.run(
        [*LAUNCH, "slurm", "--nodes", "1", "--cpu", "--", "--config", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "sbatch not found on PATH" in out.stderr
    assert not (tmp_path / "run").exists()  # nothing created for a job that was never submitted


def test_unreachable_master_times_out_instead_of_hanging(write_config):
    cfg = write_config()
    port = free_port()  # a port nobody listens on
    start = time.monotonic()
    out = subprocess.run(
        [*LAUNCH, "local", "--cpu", "--nnodes", "2", "--node-rank", "1", "--master-port", str(port)]
        + ["--rdzv-timeout", "2", "--", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"master 127.0.0.1:{port} not reachable after 2 s" in out.stderr
    assert time.monotonic() - start < 30


def test_trainer_arguments_are_required(capsys):
    assert main(["local", "--cpu"]) == 1
    assert "--config FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.micro_batch_size=abc", "train.micro_batch_size='abc' (from the command line override)"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps=0 (from the command line override)"),
        ("train.global_batch_size=1.5", "train.global_batch_size=1.5 (from the command line override)"),
        ("train.micro_batch_size=[", "override 'train.micro_batch_size=[': value is not valid YAML"),
        ("train.micro_batch_size=true", "train.micro_batch_size=True (from the command line override)"),
        ("train=5", "train must be a mapping"),
        ("run_dir=[a]", "run_dir=['a'] must be a directory path"),
    ],
)
def test_override_values_that_do_not_parse_are_one_line_naming_the_key(
    write_config, capsys, override, message
):
    for command in (["local", "--cpu"], ["slurm", "--nodes", "1", "--cpu", "--dry-run"]):
        assert main([*command, "--", "--config", str(write_config()), override]) == 1
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and message in captured.err, captured.err
        assert captured.out == ""


def test_a_bad_batch_key_in_the_file_names_the_file(write_config, capsys):
    cfg = write_config(micro_batch_size="four")
    assert main(["local", "--cpu", "--", "--config", str(cfg)]) == 1
    assert f"train.micro_batch_size='four' (from {cfg}) must be a positive integer" in capsys.readouterr().err
